"""Walking source directories: gitignore-style excludes, links never followed."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

Warn = Callable[[str, str], None]


class Entry(NamedTuple):
    """One thing to archive: its path on disk and its name inside the archive."""

    path: str
    arcname: str
    is_file: bool = False  # a regular file when walked: opened without an lstat first


def archive_name(path: Path | str) -> str:
    """Where an absolute path lands in the archive: `files/<path without leading />`."""
    return "files/" + str(path).lstrip("/")


def walk(
    root: Path,
    exclude: Sequence[str],
    warn: Warn,
    skip: frozenset[tuple[int, int]] = frozenset(),
) -> Iterator[Entry]:
    """Yield `root` and everything below it that `exclude` does not match.

    Patterns are matched against the path relative to `root`, as in a .gitignore
    placed there. Directories whose (device, inode) is in `skip` are left out;
    unreadable directories are reported through `warn` and skipped.
    """
    match = None
    if exclude:
        import pathspec  # only jobs with excludes pay for its import

        match = pathspec.GitIgnoreSpec.from_lines(exclude).match_file
    yield Entry(str(root), archive_name(root))
    stack = [(str(root), "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            warn(directory, f"directory not readable, skipped: {exc.strerror or exc}")
            continue
        subdirs = []
        for child in children:
            child_rel = f"{rel}{child.name}"
            try:
                is_dir = child.is_dir(follow_symlinks=False)
                if is_dir:
                    st = child.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) in skip:
                        continue
            except OSError as exc:
                warn(child.path, f"cannot stat, skipped: {exc.strerror or exc}")
                continue
            if match is not None and match(child_rel + "/" if is_dir else child_rel):
                continue
            yield Entry(child.path, archive_name(child.path), child.is_file(follow_symlinks=False))
            if is_dir:
                subdirs.append((child.path, child_rel + "/"))
        stack.extend(reversed(subdirs))


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a directory, to recognise it while walking; None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
