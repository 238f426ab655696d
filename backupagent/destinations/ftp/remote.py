"""The destination directory over sessions reopened after transient failures: retries,
resume, rename that is safe to repeat, and the probe of one mode."""

from __future__ import annotations

import contextlib
import ftplib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog

from backupagent.config import FtpDestination
from backupagent.destinations.base import Retrying
from backupagent.destinations.ftp import replies
from backupagent.destinations.ftp.diagnosis import (
    Failure,
    FailureKind,
    Line,
    is_transient,
)
from backupagent.destinations.ftp.dialogue import (
    TRANSFER_ERRORS,
    NoProgress,
)
from backupagent.destinations.ftp.session import FtpSession
from backupagent.diagnosis.common import ProbeResult, mode_name

T = TypeVar("T")

# A session idle longer than this is closed and a fresh one opened rather than reused:
# well inside the idle limits servers ship with (vsftpd 300 s, ProFTPD 600 s, Pure-FTPd
# 900 s), so a reused session is not one the server is about to drop.
REUSE_IDLE = 20.0


class FtpRemote:
    """The destination directory, reached through sessions that are reopened after
    transient failures: each operation is retried with exponential backoff, at most
    `retries` times and within `retry_time` seconds, and every attempt is logged.
    Until a transfer has begun on one of its sessions, at most UNTRIED_RETRIES retries."""

    def __init__(
        self, dest: FtpDestination, passive: bool, cancel: threading.Event | None = None
    ) -> None:
        self.dest = dest
        self.passive = passive
        self.cancel = cancel or threading.Event()
        self.session: FtpSession | None = None
        self.last_failure: Failure | None = None
        self.touched: set[str] = set()  # names the server may hold because of this remote
        self.transfers = 0  # transfers begun on closed sessions
        self.idle_since = 0.0  # monotonic time the session's last operation ended
        self.create_directory = True  # False: stay where the login put us...
        self.directory_missing = False  # ...and say so here
        self.log = structlog.get_logger("backupagent.ftp").bind(mode=mode_name(passive))

    @property
    def progressed(self) -> bool:
        """A transfer has begun: the server was reachable and working during this run."""
        return self.transfers + (self.session.transfers if self.session else 0) > 0

    def _connected(self) -> FtpSession:
        if self.session is not None and time.monotonic() - self.idle_since > REUSE_IDLE:
            self.close()
        if self.session is None:
            # created before open, so that failure() can describe a failed open
            self.session = FtpSession(self.dest, self.passive, self.touched)
            self.session.open()
            try:
                self.session.change_directory(self.dest.directory, self.create_directory)
            except ftplib.error_perm as exc:
                if self.create_directory or replies.is_oops(str(exc)):
                    raise
                self.directory_missing = True
        return self.session

    def close(self) -> None:
        if self.session is not None:
            self.transfers += self.session.transfers
            self.session.close()
            self.session = None

    def abandon(self) -> None:
        """Drop the session without a word: an operation broke off mid-command (a
        download the caller refused to take more of), so its replies are out of step."""
        if self.session is not None:
            self.session.ftp.broken = True  # type: ignore[attr-defined]
        self.close()

    def check(self) -> None:
        """Log in and reach the directory (creating it): a wrong password or a missing
        directory shows before any work is done. The session is kept for the work that
        follows within REUSE_IDLE (one login for a quick run); after a long dump it is
        replaced."""
        self.call("login", lambda _session, _attempt: None)

    def interrupt(self) -> None:
        """From another thread: break off the current operation."""
        if self.session is not None:
            self.session.interrupt()

    def call(self, what: str, op: Callable[[FtpSession, int], T]) -> T:
        """Run `op(session, attempt)`, retrying transient failures on a fresh session.

        On giving up, the last exception propagates and `last_failure` describes it.
        """
        retrying = Retrying(self.dest, self.cancel, self.log, "FTP")
        while True:
            try:
                return op(self._connected(), retrying.attempt)
            except TRANSFER_ERRORS as exc:
                assert self.session is not None
                failure = self.session.failure(exc)
                self.last_failure = failure
                self.close()  # a fresh connection for whatever comes next
                last = failure.dialogue[-1].text if failure.dialogue else ""
                if not retrying.again(
                    what, is_transient(failure), self.progressed, failure.error or last
                ):
                    raise
            finally:
                self.idle_since = time.monotonic()

    def upload_file(
        self, path: Path, name: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """Upload a local file; after an interruption, continue from the size on the server.

        When the server stops taking data (a full disk: 451/452/552 or a data
        connection it closes), one more attempt tells: if the size it holds has not
        grown by the next retry, NoProgress ends the upload instead of more retries.
        A server that refuses to resume (ProFTPD without AllowStoreRestart) gets the
        whole file again.
        """
        total = path.stat().st_size
        held_before: int | None = None  # SIZE at the last retry that followed a stop
        from_start = self.dest.resume == "off"

        def send(session: FtpSession, attempt: int) -> None:
            nonlocal held_before, from_start
            previous = self.last_failure if attempt else None
            stopped = previous is not None and _stopped_taking_data(previous)
            offset = 0
            if previous is not None and (stopped or not from_start):
                held = min(session.size_or_none(name) or 0, total)
                if stopped:
                    assert previous is not None
                    if held_before is not None and held <= held_before:
                        raise NoProgress(name, held, total, _last_words(previous))
                    held_before = held
                offset = 0 if from_start else held
            append = False
            if offset:
                method = self.dest.resume
                if method == "auto":
                    method = "rest" if "REST STREAM" in session.features() else "appe"
                append = method == "appe"
                self.log.info(
                    "resuming upload",
                    name=name,
                    offset=offset,
                    of=total,
                    method="APPE" if append else "REST + STOR",
                )
            try:
                with path.open("rb") as source:
                    source.seek(offset)
                    session.upload(source, name, progress, offset=offset, append=append)
            except ftplib.Error as exc:
                if offset and not _began_transfer(session.dialogue):
                    from_start = True
                    self.log.warning(
                        "the server refused to resume the upload; the next attempt sends "
                        "it from the start",
                        name=name,
                        reply=str(exc),
                    )
                raise

        self.call(f"upload of {name}", send)

    def rename(self, old: str, new: str) -> None:
        """RNFR/RNTO, safe to repeat: after a lost connection, a retry first checks
        whether the rename already happened (the target there, the source gone)."""

        def move(session: FtpSession, attempt: int) -> None:
            done = attempt and session.size_or_none(new) is not None
            if done and session.size_or_none(old) is None:
                self.log.info("rename already done before the connection was lost", name=new)
                session.touched.add(new)
                return
            session.rename(old, new)

        self.call("rename", move)

    def delete(self, names: list[str]) -> None:
        """DELE each name; one already gone (a retry, or never created) is fine."""
        self.call("delete", lambda session, _attempt: session.delete_all(names))


def _began_transfer(dialogue: list[Line] | tuple[Line, ...]) -> bool:
    """The last upload command got its 1xx: the server took the transfer on."""
    for line in reversed(dialogue):
        if line.direction == "command" and line.verb in ("STOR", "APPE"):
            return False
        if line.code is not None and 100 <= line.code < 200:
            return True
    return False


def _stopped_taking_data(failure: Failure) -> bool:
    """During an upload it had begun, the server refused more data (storage replies)
    or closed the data connection."""
    if failure.kind is FailureKind.REPLY:
        last = failure.dialogue[-1] if failure.dialogue else None
        return (
            last is not None and last.code in replies.STORAGE and _began_transfer(failure.dialogue)
        )
    return failure.kind is FailureKind.DATA_TRANSFER and failure.closed_by_server


def _last_words(failure: Failure) -> str:
    last = failure.dialogue[-1] if failure.dialogue else None
    if last is not None and last.direction == "reply":
        return last.text
    return failure.error


def probe(dest: FtpDestination, passive: bool) -> ProbeResult:
    """Log in and list the destination directory in one mode: does that data path work?"""
    s = FtpSession(dest, passive)
    try:
        s.open()
        with contextlib.suppress(ftplib.error_perm):  # not created yet: list the login dir
            s.change_directory(dest.directory, create=False)
        entries = s.listing()
        return ProbeResult(passive, True, f"{len(entries)} entries listed")
    except TRANSFER_ERRORS as exc:
        failure = s.failure(exc)
        return ProbeResult(passive, False, failure.error or type(exc).__name__)
    finally:
        s.close()
