"""Whom the agent trusts on this host, and the checks that hold it to that.

Trusted: root, this process's own user, and what they alone can change. Everyone else
(a site's owner, any local user) may have written a path on the way to a file or a
directory the agent uses, and a link or a directory they can replace could send root
elsewhere. So a symbolic link is followed only if root (or this user) made it, a
directory the agent writes in belongs to it and is writable by nobody else, and every
directory above it is one that nobody else can rename entries in (theirs, or sticky
like /tmp). README "Security" states the whole model.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections import deque
from pathlib import Path

MAX_LINKS = 40  # as the kernel's own limit on links in one path


class Untrusted(Exception):
    """A path the agent must not use: who could change it, and what to do."""


def owner_name(uid: int) -> str:
    """`uid 1001 (alice)`."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def open_directory(path: Path) -> int:
    """A descriptor of directory `path` (O_RDONLY), resolved one component at a time:
    a symbolic link on the way is followed only if root or this process's user owns
    it, since a link a tenant made (their site root, `public_html`) could lead into
    another site. Raises Untrusted, or OSError as open(2) would."""
    parts: deque[str] = deque(path.parts if path.is_absolute() else Path.cwd().joinpath(path).parts)
    parts.popleft()  # "/"
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    links = 0
    try:
        while parts:
            part = parts.popleft()
            if part in ("", "."):
                continue
            step = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            info = os.fstat(step)
            if stat.S_ISLNK(info.st_mode):
                try:
                    if not _trusted_owner(info.st_uid):
                        raise Untrusted(
                            f"{path}: the symbolic link {part!r} on the way belongs to "
                            f"{owner_name(info.st_uid)}, and only links of root are followed "
                            "(it could lead into another site); name the directory it leads to"
                        )
                    links += 1
                    if links > MAX_LINKS:
                        raise OSError(40, "Too many levels of symbolic links", str(path))
                    target = os.readlink("", dir_fd=step)
                finally:
                    os.close(step)
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                parts.extendleft(
                    reversed(
                        Path(target).parts[1:] if target.startswith("/") else Path(target).parts
                    )
                )
                continue
            os.close(fd)
            fd = step
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def real_path(fd: int) -> Path:
    """Where an open descriptor really is."""
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def _safe_ancestors(real: Path) -> str | None:
    """Why someone else could rename or replace an entry on the way to `real` (every
    directory above it: root's or this user's, and writable by nobody else unless
    sticky), or None."""
    for directory in real.parents:
        info = os.lstat(directory)
        if not _trusted_owner(info.st_uid):
            return f"{directory} belongs to {owner_name(info.st_uid)}"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return f"{directory} may be written by others (mode {info.st_mode & 0o7777:o})"
    return None


def private_directory(path: Path) -> Path:
    """`path`, created (0700) if missing, checked to be a directory of this process's
    user that nobody else can write, reached through directories nobody else can
    rename entries in. Raises Untrusted (saying who could, and what to do) or OSError;
    nothing is made below a directory that fails the check."""
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing != path:
        fd = open_directory(existing)
        try:
            why = _safe_ancestors(real_path(fd) / "new")
        finally:
            os.close(fd)
        if why is not None:
            raise Untrusted(
                f"{path}: {why}, who could swap what the agent writes below it; "
                "choose a directory only root can change"
            )
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = open_directory(path)
    try:
        info = os.fstat(fd)
        real = real_path(fd)
    finally:
        os.close(fd)
    if info.st_uid != os.geteuid():
        raise Untrusted(
            f"{path} belongs to {owner_name(info.st_uid)}, who could swap or read what the "
            "agent writes there: remove it (it is made again, private) or chown it"
        )
    if info.st_mode & 0o022:
        raise Untrusted(
            f"{path} may be written by others (mode {info.st_mode & 0o7777:o}): chmod 700 {path}"
        )
    why = _safe_ancestors(real)
    if why is not None:
        raise Untrusted(
            f"{path}: {why}, who could swap what the agent writes below it; "
            "choose a directory only root can change"
        )
    return path


def file_problem(path: Path, _links: int = 0) -> str | None:
    """Why `path` is not a configuration file to trust (a jobs.toml, an included file,
    a password or key file), or None: it must be a regular file of root (or this
    process's user) that nobody else may write, in directories nobody else can change,
    reached through links of root only."""
    try:
        fd = open_directory(path.parent)
    except Untrusted as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    try:
        try:
            info = os.lstat(path.name, dir_fd=fd)
            target = os.readlink(path.name, dir_fd=fd) if stat.S_ISLNK(info.st_mode) else None
        except OSError as exc:
            return f"cannot read: {exc.strerror or exc}"
        where = real_path(fd)
    finally:
        os.close(fd)
    if target is not None:
        if not _trusted_owner(info.st_uid):
            return f"is a symbolic link of {owner_name(info.st_uid)}: only root's are followed"
        if _links >= MAX_LINKS:
            return "cannot read: too many levels of symbolic links"
        return file_problem(where / target, _links + 1)
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if not _trusted_owner(info.st_uid):
        return (
            f"belongs to {owner_name(info.st_uid)}, who could change what the agent (as "
            f"root) does: chown root {path}"
        )
    if info.st_mode & 0o022:
        return (
            f"may be written by others (mode {info.st_mode & 0o7777:o}), who could change "
            f"what the agent does: chmod go-w {path}"
        )
    why = _safe_ancestors(where / path.name)
    if why is not None:
        return f"{why}, who could replace the file: keep it in a directory only root can change"
    return None
