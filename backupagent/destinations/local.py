"""`type = "local"`: a directory on this host (a NAS mount, a second disk) behind the
destination seam.

The same contract as FTP: a temporary name, fsync, rename, the size and SHA-256
read back, the manifest last. With `require_mount`, nothing is written unless the
directory lies on a mounted filesystem other than the root one: a NAS that is not
mounted must not fill the root disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backupagent import trust
from backupagent.config import Config, LocalDestination, Retention
from backupagent.destinations.base import (
    Capped,
    CheckStep,
    CutShort,
    DestinationError,
    Hooks,
    PartialFile,
    Unreadable,
    timed_step,
    write_test,
)
from backupagent.diagnosis.common import Category, Diagnosis, ProbeResult
from backupagent.retention import temp_name
from backupagent.workers import raise_if_cancelled

CHUNK = 1 << 20


class LocalProblem(DestinationError):
    """A local directory that cannot take the backup, explained."""

    def __init__(self, message: str, diagnosis: Diagnosis) -> None:
        super().__init__(message)
        self.diagnosis = diagnosis

    def explain(self) -> tuple[Diagnosis, ProbeResult | None]:
        return self.diagnosis, None


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem `path` (or its nearest existing parent) is on."""
    current = path.absolute()
    while not current.exists():
        current = current.parent
    while not os.path.ismount(current):
        current = current.parent
    return current


class LocalDirectory:
    """Backups as files in `path`."""

    def __init__(
        self,
        path: Path,
        name: str = "local",
        retention: Retention | None = None,
        hooks: Hooks | None = None,
        cancel: threading.Event | None = None,
        require_mount: bool = False,
    ) -> None:
        self.path = path
        self.name = name
        self.retention = retention or Retention()
        self.hooks = hooks or Hooks()
        self.cancel = cancel
        self.require_mount = require_mount
        self.written: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"destination": self.name, "directory": str(self.path)}

    def check(self) -> None:
        """The mount first (before a missing directory is created on the root disk)."""
        self._check_mount()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._problem(f"cannot create {self.path}", exc) from None
        self._check_private()

    def _check_private(self) -> None:
        """Nobody but the agent may write the directory: another user could swap a
        backup between its writing and its rename, or plant a link for root to follow."""
        try:
            fd = trust.open_directory(self.path)
        except trust.Untrusted as exc:
            raise self._untrusted(str(exc)) from None
        except OSError as exc:
            raise self._problem(f"cannot open {self.path}", exc) from None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if info.st_uid not in (0, os.geteuid()):
            raise self._untrusted(f"{self.path} belongs to {trust.owner_name(info.st_uid)}")
        if info.st_mode & 0o022:
            raise self._untrusted(
                f"{self.path} may be written by others (mode {info.st_mode & 0o7777:o})"
            )

    def _untrusted(self, what: str) -> LocalProblem:
        return LocalProblem(
            what,
            Diagnosis(
                Category.PATH,
                f"{self.path} is not private to the agent",
                (what,),
                f"another user could swap or read a backup as it is written: chown root "
                f"{self.path} and chmod 700 it (a CIFS mount: dir_mode=0700,uid=0), or "
                "choose another `path`",
                keys=("path",),
            ),
        )

    def survey(self) -> list[str] | None:
        self._check_mount()
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not os.access(existing, os.W_OK | os.X_OK):
            verb = "write to" if existing == self.path else "create"
            error = PermissionError(errno.EACCES, f"this user may not {verb} {existing}")
            raise self._problem(f"cannot {verb} {self.path}", error)
        return self.names() if existing == self.path else None

    def _check_mount(self) -> None:
        if self.require_mount and mount_point(self.path) == Path("/"):
            what = f"{self.path} is not on a mounted filesystem (require_mount = true)"
            raise LocalProblem(
                what,
                Diagnosis(
                    Category.PATH,
                    what,
                    (f"{self.path} lies on the root filesystem: nothing is mounted there",),
                    "mount the filesystem (the NAS) at or above that path, or check `path`",
                    keys=("path", "require_mount"),
                ),
            )

    def _problem(self, what: str, exc: OSError) -> DestinationError:
        """An OSError in plain words; a full disk and a refused write are diagnosed."""
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            usage = shutil.disk_usage(mount_point(self.path))
            return LocalProblem(
                f"{what}: {reason}",
                Diagnosis(
                    Category.NO_SPACE,
                    f"the filesystem of {self.path} is full",
                    (f"{what}: {reason}", f"{usage.free} bytes free of {usage.total}"),
                    "free space there, or lower `keep` so that fewer backups are kept",
                    keys=("path", "keep"),
                ),
            )
        if exc.errno == errno.EROFS:  # the shipped units: ProtectSystem=strict
            return LocalProblem(
                f"{what}: {reason}",
                Diagnosis(
                    Category.PATH,
                    f"{self.path} is on a filesystem that is read-only to this process",
                    (f"{what}: {reason}",),
                    "under systemd, every path but those named in ReadWritePaths= is "
                    "read-only (ProtectSystem=strict): run `systemctl edit backupagent` "
                    "(and `systemctl edit backupagent-run@` if you use the timers), add "
                    f"`ReadWritePaths={self.path}` under [Service], then `systemctl restart "
                    "backupagent`; outside systemd, the filesystem is mounted read-only",
                    keys=("path",),
                ),
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return LocalProblem(
                f"{what}: {reason}",
                Diagnosis(
                    Category.PATH,
                    f"this user may not write to {self.path}",
                    (f"{what}: {reason}",),
                    "give this user write access there, or choose another `path`",
                    keys=("path",),
                ),
            )
        return DestinationError(f"{what}: {reason}")

    def names(self) -> list[str]:
        try:
            with os.scandir(self.path) as entries:
                return [e.name for e in entries if e.is_file(follow_symlinks=False)]
        except OSError as exc:
            raise DestinationError(f"cannot list {self.path}: {exc.strerror or exc}") from None

    def publish_file(
        self, path: Path, name: str, sha256: str, progress: Callable[[int], None] | None = None
    ) -> None:
        with path.open("rb") as source:
            held = self._publish(name, iter(lambda: source.read(CHUNK), b""), progress)
        self._verify(name, held, path.stat().st_size, sha256)

    def publish_bytes(self, data: bytes, name: str) -> None:
        held = self._publish(name, iter([data]), None)
        self._verify(name, held, len(data), hashlib.sha256(data).hexdigest())

    def _publish(
        self, name: str, blocks: Any, progress: Callable[[int], None] | None
    ) -> tuple[int, str]:
        """Write `name` under a temporary name, read it back through the descriptor
        that wrote it (never by name: a name can be swapped), rename it; returns the
        size and SHA-256 it holds."""
        final = self._at(name)  # refused before anything is written
        temp = self._at(temp_name(name))
        self._will_write(temp.name, name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)  # a killed run's (a link is removed, never followed)
            fd = os.open(temp, flags, 0o600)
            try:
                for block in blocks:
                    raise_if_cancelled(self.cancel)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view) :]
                    if progress:
                        progress(len(block))
                os.fsync(fd)
                held = _read_back(fd)
                os.replace(temp, final)
                renamed, mine = os.lstat(final), os.fstat(fd)
            finally:
                os.close(fd)
            if (renamed.st_dev, renamed.st_ino) != (mine.st_dev, mine.st_ino):
                raise DestinationError(f"{final} was replaced by another file as it was published")
            directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)  # the rename itself survives a power cut
            finally:
                os.close(directory)
        except OSError as exc:
            raise self._problem(f"writing {self._at(name)}", exc) from None
        return held

    def _verify(self, name: str, held_by: tuple[int, str], size: int, sha256: str) -> None:
        held, digest = held_by
        if held != size or digest != sha256:
            raise DestinationError(
                f"{self._at(name)} holds {held} bytes (SHA-256 {digest}), {size} were written"
            )

    def commit(self) -> None:
        self.written.clear()

    def rollback(self) -> None:
        for name in self.written:
            try:
                self._at(name).unlink(missing_ok=True)
            except OSError as exc:
                self.hooks.warn(name, f"could not remove: {exc.strerror or exc}")
        self.written.clear()

    def delete(self, names: list[str]) -> None:
        for name in names:
            try:
                self._at(name).unlink(missing_ok=True)
            except OSError as exc:
                raise DestinationError(f"cannot delete {self._at(name)}: {exc}") from None

    def read(self, name: str, limit: int) -> bytes:
        sink = Capped(limit)
        self._copy(name, sink, 0)
        return bytes(sink.data)

    def download(self, name: str, target: Path, size: int) -> str:
        partial = PartialFile(target, size, name)
        appending = partial.attempt()
        if appending is not None:
            with appending:
                self._copy(name, appending, appending.offset)
                if not appending.complete:
                    raise CutShort(
                        f"{self._at(name)} holds {size - appending.room} of the {size} bytes "
                        "its manifest declares: it was cut short; nothing was extracted"
                    )
        return partial.finish()

    def _copy(self, name: str, sink: Callable[[bytes], None], offset: int) -> None:
        try:
            fd = os.open(self._at(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise Unreadable(f"cannot read {self._at(name)}: {exc.strerror or exc}") from None
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            while block := os.read(fd, CHUNK):
                raise_if_cancelled(self.cancel)
                sink(block)
        finally:
            os.close(fd)

    def _at(self, name: str) -> Path:
        """A name in the directory; a name that could lead out of it is refused."""
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise DestinationError(f"refusing the file name {name!r}")
        return self.path / name

    def _will_write(self, *names: str) -> None:
        self.written.extend(n for n in names if n not in self.written)

    def close(self) -> None:
        pass


def _read_back(fd: int) -> tuple[int, str]:
    """Size and SHA-256 of what the open file `fd` holds, read from its start."""
    digest, at = hashlib.sha256(), 0
    while block := os.pread(fd, CHUNK, at):
        digest.update(block)
        at += len(block)
    return at, digest.hexdigest()


def open_for_job(
    config: Config,
    job: str,
    name: str,
    hooks: Hooks | None = None,
    cancel: threading.Event | None = None,
) -> LocalDirectory:
    settings = config.destinations[name]
    assert isinstance(settings, LocalDestination)
    return LocalDirectory(
        settings.path, name, settings, hooks, cancel, require_mount=settings.require_mount
    )


def checkup(config: Config, job: str, name: str) -> list[CheckStep]:
    """`diagnose` for a local directory: the mount, the directory, its room, and a
    test file written, read back and removed."""
    settings = config.destinations[name]
    assert isinstance(settings, LocalDestination)
    directory = LocalDirectory(settings.path, name, require_mount=settings.require_mount)
    mount = mount_point(settings.path)
    steps = [timed_step("mount and directory", lambda: _checked(directory, mount))]
    if not steps[0].ok:
        return steps

    def room() -> str:
        usage = shutil.disk_usage(settings.path)
        return f"{usage.free} bytes free of {usage.total} on {mount}"

    steps.append(timed_step("free space", room))
    steps.append(timed_step("write test", lambda: write_test(directory)))
    return steps


def _checked(directory: LocalDirectory, mount: Path) -> str:
    directory.check()
    return f"{directory.path} exists, on the filesystem mounted at {mount}"
