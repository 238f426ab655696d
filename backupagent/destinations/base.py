"""The seam between a run and where its backups go.

A destination is one directory (on an FTP server today; an SFTP server or a local
disk next) holding every job's backups as plain files named by retention.py. The
actions (backup, prune, restore, verify) see only `Destination`; each type lives in
its own module or package under destinations/ and is registered in
destinations/__init__.py.

The publishing contract, whatever the type: a file is written under a temporary
name, renamed when complete and then checked (size, and a checksum where the other
side can compute one); the manifest is published last, and `commit` then makes the
backup complete. Until then `rollback` removes what the run wrote.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from backupagent.config import Retention
from backupagent.diagnosis.common import Diagnosis, ProbeResult
from backupagent.unpack import write_all


class DestinationError(Exception):
    """An operation failed for good (after the destination's own retries)."""

    def explain(self) -> tuple[Diagnosis, ProbeResult | None] | None:
        """What the failure means and what to change (with a check of the change,
        if the type can make one); None when the message says it all."""
        return None


class Unreadable(DestinationError):
    """One named file cannot be read (gone, or refused): the others may still be."""


class CutShort(DestinationError):
    """The destination holds less of a file than its manifest declares, or sends more."""


class SpoolFull(DestinationError):
    """This host's disk filled up while a download was written: a local fault, never
    the server's (an OSError from the write would be taken for a network error)."""


@dataclass(frozen=True)
class CheckStep:
    """One step of `backupagent diagnose`: did it work, how long it took, what it saw."""

    name: str
    ok: bool
    seconds: float
    detail: str


def timed_step(name: str, action: Callable[[], str]) -> CheckStep:
    """Run `action` (which returns what it saw) as one step; a DestinationError or an
    OSError fails the step with its message."""
    started = time.monotonic()
    try:
        detail = action()
    except (DestinationError, OSError) as exc:
        return CheckStep(name, False, time.monotonic() - started, str(exc))
    return CheckStep(name, True, time.monotonic() - started, detail)


def write_test(destination: Destination) -> str:
    """`diagnose`'s last step for any type: a small file published, read back, removed."""
    probe = f".backupagent-diagnose-{secrets.token_hex(4)}"
    data = b"backupagent diagnose: this file is deleted right away\n"
    try:
        destination.publish_bytes(data, probe)
        if destination.read(probe, len(data)) != data:
            raise DestinationError("the test file read back differs")
    finally:
        destination.rollback()
    return "wrote, read back and removed a test file"


@dataclass(frozen=True)
class Hooks:
    """What a destination tells the run besides success and failure."""

    # a problem that did not stop the run, about `subject` (a file, the directory)
    warn: Callable[[str, str], None] = lambda subject, reason: None
    # (warning, suggestion): it worked only after a change the user should make
    advise: Callable[[str, str], None] = lambda warning, suggestion: None


class Destination(Protocol):
    """A directory of backups, reached however its type reaches it.

    Every method raises DestinationError when it fails for good, and
    workers.Cancelled when the cancel event the destination was opened with is set.
    """

    @property
    def name(self) -> str:
        """The [destinations.NAME] it was configured as."""
        ...

    @property
    def retention(self) -> Retention:
        """keep, keep_daily, ... and partial_grace_hours."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where it is, as log fields (server, directory, mode...)."""
        ...

    def check(self) -> None:
        """Reach the directory (creating it), so a wrong password or path shows
        before any work is done."""
        ...

    def names(self) -> list[str]:
        """The plain file names in the directory."""
        ...

    def survey(self) -> list[str] | None:
        """Log in and list the directory, writing nothing (`run-job --dry-run`): its
        plain file names, or None when it does not exist yet (a run would create it)."""
        ...

    def publish_file(
        self, path: Path, name: str, sha256: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """Upload `path` under a temporary name, rename it to `name`, check it.
        `progress` hears the bytes sent; raising from it stops the upload."""
        ...

    def publish_bytes(self, data: bytes, name: str) -> None:
        """`data` as `name`, by the same contract (the manifest)."""
        ...

    def commit(self) -> None:
        """The manifest is published: the run's files now form a complete backup and
        are no longer rolled back."""
        ...

    def rollback(self) -> None:
        """Best effort, bounded in time: remove what this run wrote since the last
        commit. Never raises."""
        ...

    def delete(self, names: list[str]) -> None:
        """Delete `names` in order; a name already gone is fine."""
        ...

    def read(self, name: str, limit: int) -> bytes:
        """A small file, whole; CutShort past `limit` bytes (nothing more is read)."""
        ...

    def download(self, name: str, target: Path, size: int) -> str:
        """`name` into `target` (0600, never through a link): exactly `size` bytes,
        resumed where it broke off, and their SHA-256 (hashed as they were written);
        CutShort when the other side has fewer or more, SpoolFull when this host's disk
        is."""
        ...

    def close(self) -> None: ...


# what destinations/__init__.py registers for each `type`: (settings, job, hooks, cancel)
Opener = Callable[..., Destination]


# Until data has moved in an action, a transient failure is retried this many times
# only: a server that is down, unreachable or refusing us at the start fails the run in
# seconds rather than minutes; once data moves, a restart mid-upload is ridden out.
UNTRIED_RETRIES = 1


class Retrying:
    """The retry policy every remote destination shares: exponential backoff from
    `retry_wait`, doubling to at most 60 s, at most `retries` more attempts (one until
    data has moved) and none starting after `retry_time`; each retry logged."""

    def __init__(
        self, settings: Any, cancel: threading.Event | None, log: Any, protocol: str
    ) -> None:
        self.settings = settings  # any table with retries, retry_wait, retry_time
        self.cancel = cancel or threading.Event()
        self.log = log
        self.protocol = protocol
        self.attempt = 0
        self.delay = settings.retry_wait
        self.deadline = time.monotonic() + settings.retry_time

    def again(self, what: str, transient: bool, progressed: bool, reason: str) -> bool:
        """After a failure: True once the backoff has passed and another attempt is
        due; False to give up (not transient, out of attempts or time, or cancelled)."""
        retries = (
            self.settings.retries if progressed else min(self.settings.retries, UNTRIED_RETRIES)
        )
        if (
            self.cancel.is_set()
            or not transient
            or self.attempt >= retries
            or time.monotonic() + self.delay > self.deadline
        ):
            return False
        self.attempt += 1
        self.log.warning(
            f"{self.protocol} {what} failed; retrying",
            attempt=self.attempt,
            retries=self.settings.retries,
            wait_seconds=self.delay,
            reason=reason,
        )
        if self.cancel.wait(self.delay):
            return False
        self.delay = min(self.delay * 2, 60.0)
        return True


class PartialFile:
    """The local side of a resumable download: `target.partial`, appended to, never
    followed through a link, hashed as it is written, renamed to `target` once it holds
    `size` bytes."""

    FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, target: Path, size: int, name: str | None = None) -> None:
        self.target = target
        self.size = size
        self.name = name or target.name  # the file's name at the destination
        self.path = target.with_name(target.name + ".partial")
        self.starts: list[int] = []  # where each attempt began
        self.digest = hashlib.sha256()
        self.hashed = 0  # bytes of the file in `digest`

    def attempt(self) -> _Appending | None:
        """Open for the next attempt; None when it is complete already. CutShort when
        the attempt before brought nothing (the other side has no more)."""
        try:
            fd = os.open(self.path, self.FLAGS, 0o600)
        except OSError as exc:
            raise DestinationError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        held = os.fstat(fd).st_size
        self._catch_up(fd, held)
        if held >= self.size:
            os.close(fd)
            return None
        if self.starts and held <= self.starts[-1]:
            os.close(fd)
            raise CutShort(
                f"the server holds only {held} of the {self.size} bytes of {self.name} "
                "its manifest declares: it was cut short; nothing was extracted"
            )
        self.starts.append(held)
        return _Appending(fd, self.size - held, self, held)

    def _catch_up(self, fd: int, held: int) -> None:
        """Hash what an earlier attempt wrote but did not hash (a write cut short)."""
        while self.hashed < held:
            block = os.pread(fd, min(1 << 20, held - self.hashed), self.hashed)
            if not block:
                break
            self.digest.update(block)
            self.hashed += len(block)

    def finish(self) -> str:
        """The complete file under its name; its SHA-256 (every byte was hashed by the
        sink or by `attempt`'s catching up)."""
        os.replace(self.path, self.target)
        return self.digest.hexdigest()


class _Appending:
    """A download sink that refuses a byte past the declared size and hashes the rest."""

    def __init__(self, fd: int, room: int, partial: PartialFile, offset: int) -> None:
        self.fd, self.room, self.partial, self.offset = fd, room, partial, offset
        self.name = partial.name

    def __call__(self, block: bytes) -> None:
        if len(block) > self.room:
            raise CutShort(f"the server sent more of {self.name} than its manifest's size: refused")
        try:
            write_all(self.fd, block)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(full_message(self.partial.path, self.room)) from None
            raise DestinationError(
                f"cannot write {self.partial.path}: {exc.strerror or exc}"
            ) from None
        self.room -= len(block)
        self.partial.digest.update(block)  # blocks come in order, from what was hashed
        self.partial.hashed += len(block)

    @property
    def complete(self) -> bool:
        return self.room == 0

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> _Appending:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_bytes(directory: Path) -> int:
    """Bytes free for this user in `directory`'s filesystem (0 if it cannot be told)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def full_message(path: Path, needed: int) -> str:
    """`the spool on this host is full: ...` for a write into `path` that needs `needed`
    more bytes."""
    return (
        f"the spool on this host is full: {free_bytes(path.parent)} bytes free in "
        f"{path.parent}, {needed} more needed (a local fault, not the server's: free space "
        "or set [agent] spool_dir)"
    )


class Capped:
    """A sink keeping at most `limit` bytes in memory; CutShort past them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def __call__(self, block: bytes) -> None:
        if len(self.data) + len(block) > self.limit:
            raise CutShort(f"the server sent more than {self.limit} bytes")
        self.data.extend(block)

    def reset(self) -> Capped:
        """Empty again, for another attempt."""
        self.data.clear()
        return self


def answers_ssh(host: str, port: int = 22, timeout: float = 5.0) -> bool:
    """Whether `host` greets as an SSH server on `port`: when FTP's data connection is
    blocked both ways, an sftp destination on the same host avoids it altogether."""
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False
