"""An FTP/FTPS directory behind the destination seam (destinations/base.py).

On top of FtpRemote (retries, resume, safe rename) this adds what a run needs: the
publish contract (temporary name, RNFR/RNTO, SIZE and the server's own checksum),
the switch to the other data-connection mode once (`fallback`), the clean-up of what
a failed run or a failed mode left, and failures that explain themselves from the
recorded dialogue, probing the other mode before a flip is suggested.
"""

from __future__ import annotations

import dataclasses
import ftplib
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from backupagent.config import Config, FtpDestination
from backupagent.destinations.base import (
    Capped,
    DestinationError,
    Hooks,
    PartialFile,
    Unreadable,
    answers_ssh,
)
from backupagent.destinations.ftp import replies
from backupagent.destinations.ftp.diagnosis import Failure, diagnose
from backupagent.destinations.ftp.dialogue import (
    TRANSFER_ERRORS,
    DataTransferError,
    LocalReadError,
)
from backupagent.destinations.ftp.remote import FtpRemote, probe
from backupagent.destinations.ftp.session import FtpSession
from backupagent.diagnosis.common import Diagnosis, ProbeResult, mode_name, passive_setting
from backupagent.retention import temp_name
from backupagent.workers import Cancelled, on_cancel


class FtpFailed(DestinationError):
    """The FTP dialogue failed; `other_mode` is set when `fallback` tried it too."""

    def __init__(
        self,
        failure: Failure,
        settings: FtpDestination,
        other_mode: ProbeResult | None = None,
        message: str | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message or failure.error)
        self.refused = refused  # a permanent (5xx) answer about the file itself
        self.failure = failure
        self.settings = settings
        self.other_mode = other_mode

    def explain(self) -> tuple[Diagnosis, ProbeResult | None]:
        """The diagnosis; before a mode flip is suggested, the other mode is tried
        with a directory listing (unless `fallback` tried it already)."""
        diagnosis = diagnose(self.failure)
        if self.other_mode is not None or not diagnosis.flips_mode:
            return diagnosis, self.other_mode
        log = structlog.get_logger("backupagent.run")
        other = bool(diagnosis.passive_should_be)
        log.info(f"probing {mode_name(other)} mode with a directory listing")
        result = probe(self.settings, other)
        log.info("probe finished", probe_mode=mode_name(other), ok=result.ok, detail=result.detail)
        if not result.ok and answers_ssh(self.settings.host, 22, self.settings.connect_timeout):
            log.info("the FTP server also answers SSH on port 22")
            result = dataclasses.replace(result, ssh_too=True)
        return diagnosis, result


class VerifyFailed(DestinationError):
    """The server holds a different size or checksum than was sent."""


class Ftp:
    """One job's FTP destination for the length of one action."""

    def __init__(
        self,
        name: str,
        settings: FtpDestination,
        passive: bool,
        *,
        job: str = "",
        config_path: Path | None = None,
        fallback: bool = False,
        mode_table: str | None = None,
        hooks: Hooks | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.retention = settings
        self.passive = passive
        self.job = job
        self.config_path = config_path
        self.fallback = fallback
        self.mode_table = mode_table  # where the `passive` change goes (default: the job's)
        self.hooks = hooks or Hooks()
        self.cancel = cancel or threading.Event()
        self.log = structlog.get_logger("backupagent.run")
        # the connection in use; `fallback` may switch it to the other mode once
        self.remote = FtpRemote(settings, passive, self.cancel)
        self.remotes = [self.remote]  # every one used: what each may have left behind
        self.switched = False
        self.written: list[str] = []  # names to remove on rollback

    def describe(self) -> dict[str, Any]:
        return {
            "destination": self.name,
            "server": f"{self.settings.host}:{self.settings.effective_port}",
            "directory": self.settings.directory,
            "mode": mode_name(self.passive),
        }

    def check(self) -> None:
        self._on(self.remote, lambda remote: remote.check())

    def names(self) -> list[str]:
        return self._on(self.remote, lambda remote: remote.call("listing", _names))

    def survey(self) -> list[str] | None:
        """Log in, then CWD without MKD. Where that fails (the directory is to be made),
        the login directory is listed instead: the data connection is tried either way."""
        self.remote.create_directory = False
        self.remote.directory_missing = False
        try:
            names = self.names()
            return None if self.remote.directory_missing else names
        finally:
            self.remote.close()  # a run's session makes the directory
            self.remote.create_directory = True

    def delete(self, names: list[str]) -> None:
        self._on(self.remote, lambda remote: remote.delete(names))

    def read(self, name: str, limit: int) -> bytes:
        sink = Capped(limit)

        def fetch(session: FtpSession, _attempt: int) -> None:
            session.download(name, sink.reset())

        self._fetching(name, fetch)
        return bytes(sink.data)

    def download(self, name: str, target: Path, size: int) -> str:
        partial = PartialFile(target, size, name)

        def fetch(session: FtpSession, _attempt: int) -> None:
            appending = partial.attempt()
            if appending is None:
                return
            with appending:
                if appending.offset:
                    self.log.info("resuming download", name=name, offset=appending.offset, of=size)
                session.download(name, appending, offset=appending.offset)
                if not appending.complete:  # the server ended the transfer early
                    raise DataTransferError(
                        f"the server ended {name} at byte {size - appending.room} of {size}"
                    )

        self._fetching(name, fetch)
        return partial.finish()

    def _fetching(self, name: str, fetch: Callable[[FtpSession, int], None]) -> None:
        """A download; a file the server refuses to send (550) is Unreadable."""
        try:
            self._on(self.remote, lambda remote: remote.call(f"download of {name}", fetch))
        except FtpFailed as exc:
            if exc.refused:
                raise Unreadable(str(exc)) from None
            raise

    def publish_file(
        self, path: Path, name: str, sha256: str, progress: Callable[[int], None] | None = None
    ) -> None:
        def send(remote: FtpRemote) -> None:
            temp = self._temp_name(name)
            self._will_write(temp, name)
            remote.upload_file(path, temp, progress)
            remote.rename(temp, name)
            remote.call("check", lambda session, _: self._verify(session, path, name, sha256))

        self._with_fallback(name, send)

    def publish_bytes(self, data: bytes, name: str) -> None:
        def send(remote: FtpRemote) -> None:
            temp = self._temp_name(name)
            self._will_write(temp, name)
            remote.call("manifest upload", lambda session, _: session.upload_bytes(data, temp))
            remote.rename(temp, name)

        self._with_fallback("manifest", send)

    def commit(self) -> None:
        self.written.clear()
        self._remove_abandoned()

    def rollback(self) -> None:
        """On a fresh connection, one attempt broken off after `timeout` whatever the
        server does (a stopped run must exit soon; what stays is removed by a later
        run's retention). Only names the server may hold are deleted: a run that
        uploaded nothing does not log in again (a second failed login can trip
        fail2ban)."""
        self.remote.close()
        touched = set().union(*(remote.touched for remote in self.remotes))
        names = [name for name in self.written if name in touched]
        self.written.clear()
        if not names:
            return
        self.log.info("removing incomplete upload", names=names)
        remote = FtpRemote(self.settings.model_copy(update={"retries": 0}), self.remote.passive)
        watchdog = threading.Timer(self.settings.timeout, remote.interrupt)
        watchdog.start()
        try:
            remote.delete(names)
        except TRANSFER_ERRORS:
            self.log.warning("could not remove incomplete upload from the server", names=names)
        finally:
            watchdog.cancel()
            remote.close()

    def close(self) -> None:
        for remote in self.remotes:
            remote.close()

    def _on(self, remote: FtpRemote, op: Callable[[FtpRemote], Any]) -> Any:
        """`op(remote)`; a cancel request breaks off its blocking I/O at once. FTP
        errors leave as FtpFailed."""
        try:
            with on_cancel(self.cancel, remote.interrupt):
                return op(remote)
        except LocalReadError as exc:
            remote.abandon()
            raise DestinationError(str(exc)) from exc
        except TRANSFER_ERRORS as exc:
            failure = self._failure_of(remote, exc)
            refused = isinstance(exc, ftplib.error_perm) and not replies.is_oops(str(exc))
            raise FtpFailed(
                failure, self.settings, message=str(exc) or None, refused=refused
            ) from None
        except BaseException:  # stopped mid-command (a sink refused more, a cancel)
            remote.abandon()
            raise

    def _failure_of(self, remote: FtpRemote, exc: BaseException) -> Failure:
        """What the connection's last failed operation showed; Cancelled if cancelled."""
        remote.close()
        if self.cancel.is_set():  # the error is our own interruption
            raise Cancelled("the run was stopped") from exc
        assert remote.last_failure is not None
        return remote.last_failure

    def _with_fallback(self, what: str, op: Callable[[FtpRemote], None]) -> None:
        """`op` on the current connection; with `fallback`, once more in the other
        mode. The first switch is kept for the rest of the run."""
        try:
            self._on(self.remote, op)
            return
        except FtpFailed as exc:
            first = exc
        diagnosis = diagnose(first.failure)
        if not (self.fallback and diagnosis.flips_mode and not self.switched):
            raise first
        failed, other = mode_name(self.passive), mode_name(not self.passive)
        self.log.warning(
            f"the data connection failed in {failed} mode; trying {other} mode once "
            "(fallback = true)",
            reason=diagnosis.what,
            during=what,
        )
        self.switched = True
        self.remote = FtpRemote(self.settings, not self.passive, self.cancel)
        self.remotes.append(self.remote)
        try:
            self._on(self.remote, op)
        except FtpFailed as second:
            error = second.failure.error or "the upload failed"
            raise FtpFailed(
                first.failure, self.settings, ProbeResult(not self.passive, False, error)
            ) from None
        change = passive_setting(not self.passive)
        note = (
            f"the data connection failed in {failed} mode, {other} mode worked "
            f"(fallback). To skip the failed attempt next time, set {change} under "
            f"[{self.mode_table or f'jobs.{self.job}'}] in {self.config_path}"
        )
        suggestion = f"Job '{self.job}': {note}."
        self.hooks.advise(f"fallback to {other} mode: {note}", suggestion)
        self.log.warning("fallback", text=suggestion, change=change)

    def _temp_name(self, name: str) -> str:
        """After a fallback, another temporary name than the failed attempt's."""
        return temp_name(name, mode_name(self.remote.passive) if self.switched else "")

    def _will_write(self, *names: str) -> None:
        for name in names:
            if name not in self.written:
                self.written.append(name)

    def _verify(self, session: FtpSession, path: Path, name: str, sha256: str) -> None:
        """SIZE, and the server's own checksum where FEAT offers HASH, XSHA256 or XMD5."""
        expected = path.stat().st_size
        try:
            size = session.size(name)
        except ftplib.error_perm as exc:
            if replies.code_of(exc) not in replies.UNSUPPORTED_HERE or replies.is_oops(str(exc)):
                raise
            self.hooks.warn(name, "the server does not support SIZE; upload size not verified")
        else:
            if size != expected:
                raise VerifyFailed(
                    f"size check failed: the server reports {size} bytes for {name}, "
                    f"{expected} were sent"
                )
            self.log.info("size verified", name=name, size=size)
        try:
            remote = session.remote_hash(name)
        except ftplib.error_perm as exc:
            self.log.info("the server could not hash the file", reply=str(exc))
            return
        if remote is None:
            return
        algorithm, digest = remote
        if algorithm == "sha256":
            local = sha256
        else:
            with path.open("rb") as handle:
                local = hashlib.file_digest(handle, algorithm).hexdigest()
        if digest != local:
            raise VerifyFailed(
                f"checksum mismatch: the server's {algorithm} of {name} is {digest}, "
                f"the volume's is {local}"
            )
        self.log.info("checksum verified by the server", name=name, algorithm=algorithm)

    def _remove_abandoned(self) -> None:
        """After a fallback, what the failed mode's attempt left on the server (vsftpd
        keeps the empty file it created before it failed to connect back)."""
        if not self.switched:
            return
        abandoned = sorted(self.remotes[0].touched - self.remote.touched)
        if not abandoned:
            return
        try:
            self.delete(abandoned)
            self.log.info("removed what the failed mode's attempt left", names=abandoned)
        except FtpFailed as exc:
            self.hooks.warn(
                self.settings.directory, f"could not remove {', '.join(abandoned)}: {exc}"
            )


def _names(session: FtpSession, _attempt: int) -> list[str]:
    return session.names()


def open_for_job(
    config: Config,
    job: str,
    name: str,
    hooks: Hooks | None = None,
    cancel: threading.Event | None = None,
) -> Ftp:
    """The job's FTP destination `name`, in the job's mode."""
    settings = config.destinations[name]
    assert isinstance(settings, FtpDestination)
    return Ftp(
        name,
        settings,
        config.passive_for(job, name),
        job=job,
        config_path=config.file_of(config.mode_table(job, name)),
        fallback=config.jobs[job].fallback,
        mode_table=config.mode_table(job, name),
        hooks=hooks,
        cancel=cancel,
    )
