"""One run of one job: archive, upload, publish, prune; or fail and explain why."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import errno
import ftplib
import functools
import hashlib
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from backupagent import __version__, process, replies
from backupagent.archive import FLUSH, ArchiveStats, Flush, write_archive
from backupagent.config import Config, config_warnings
from backupagent.crypto import AGE_SUFFIX, fingerprint
from backupagent.destinations import ftp
from backupagent.diagnosis import (
    Diagnosis,
    Failure,
    ProbeResult,
    diagnose,
    mode_name,
    passive_setting,
    suggestion_text,
    wordpress_diagnosis,
)
from backupagent.manifest import Archive as ManifestArchive
from backupagent.manifest import Contents, DatabaseDump, Encryption, Manifest
from backupagent.manifest import Volume as ManifestVolume
from backupagent.outcome import (  # re-exported: the CLI and tests take them from here
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    Outcome,
    RunResult,
    Trigger,
)
from backupagent.progress import Progress, logged_progress
from backupagent.recording import SetupError, new_run_id, recorded_run
from backupagent.retention import (
    RUN_ID_PATTERN,
    archive_name,
    complete_backups,
    manifest_name,
    retention_policy,
    select_for_deletion,
    stale_leftovers,
    temp_name,
)
from backupagent.sources.databases import Dump, DumpFailed, dump, targets_from_job
from backupagent.sources.files import Entry, identity, walk
from backupagent.sources.wordpress import Site, WordPressError, read_site
from backupagent.volumes import Pipeline, Volume

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_USAGE",
    "RunResult",
    "SetupError",
    "new_run_id",
    "run_job",
]


class RunError(Exception):
    """A failure outside the FTP dialogue (missing source, local disk), in plain words."""


class Aborted(Exception):
    """The run was asked to stop (SIGTERM/SIGINT); it cleans up and records itself aborted."""


def run_job(
    config: Config,
    job_name: str,
    progress: Progress | None = None,
    *,
    trigger: str = Trigger.MANUAL,
    cancel: threading.Event | None = None,
) -> RunResult:
    """Run `job_name` once and record it in the history.

    Raises state.JobLocked if the job is already running (here or in another process).
    Setting `cancel` aborts the run: what it uploaded and spooled is removed.
    """
    with recorded_run(config, job_name, Trigger(trigger)) as (result, started):
        _remove_stale_spool(config.agent.spool_dir / job_name, job_name)
        watch = progress or logged_progress(config.agent.progress_interval)
        _Run(config, job_name, result.run_id, started, result, watch, cancel).execute()
    return result


def _remove_stale_spool(spool: Path, job: str) -> None:
    """The work directories of earlier runs of `job` (a run killed before it could
    clean up); called with the job's lock held, so none of them is in use."""
    pattern = re.compile(rf"^{re.escape(job)}-{RUN_ID_PATTERN}$")
    for entry in spool.iterdir():
        if pattern.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            structlog.get_logger("backupagent.run").info(
                "removed the spool of an interrupted run", path=str(entry)
            )


class _Run:
    """The steps of one run, sharing the job's settings and the result being filled in."""

    def __init__(
        self,
        config: Config,
        job_name: str,
        run_id: str,
        started: dt.datetime,
        result: RunResult,
        progress: Progress,
        cancel: threading.Event | None = None,
    ) -> None:
        self.cancel = cancel or threading.Event()
        self.config = config
        self.job_name = job_name
        self.job = config.jobs[job_name]
        self.dest = config.destination_of(job_name)
        self.passive = config.passive_for(job_name)
        self.started = started
        self.result = result
        self.progress = progress
        self.backup_id = f"{job_name}-{run_id}"
        self.recipients = config.recipients_for(job_name)
        # the uploaded archive's name says whether it is encrypted
        self.archive = archive_name(self.backup_id) + (AGE_SUFFIX if self.recipients else "")
        self.log = structlog.get_logger("backupagent.run")
        # the connection in use; `fallback` may switch it to the other mode once
        self.remote = ftp.FtpRemote(self.dest, self.passive, self.cancel)
        self.remotes = [self.remote]  # every one used: what each may have left behind
        self.switched = False
        self.written: list[str] = []  # remote names to remove if the run fails

    def execute(self) -> None:
        log = self.log
        for warning in config_warnings(self.config, self.job_name):
            log.warning("unsafe setting", detail=warning)
        log.info(
            "run started",
            destination=self.job.destination,
            server=f"{self.dest.host}:{self.dest.effective_port}",
            directory=self.dest.directory,
            mode=mode_name(self.passive),
            sources=[str(s) for s in self.job.sources],
            agent_version=__version__,
        )
        work = self.config.agent.spool_dir / self.job_name / self.backup_id
        try:
            self._check_sources()
            site = read_site(self.job.wordpress, self.job) if self.job.wordpress else None
            self._check_destination()
            work.mkdir(mode=0o700)
            with _Dumping(self._dump_databases, site, work) as dumping:
                stats, volumes = self._archive_and_upload(work, dumping)
                dumps = dumping.result(self._check_cancel)
            self.result.stats = stats
            self.result.warnings.extend(stats.warnings)
            self._with_fallback(
                "manifest", lambda r: self._publish(r, self._manifest(stats, volumes, dumps, site))
            )
            self._remove_abandoned()
            self._prune(self.remote)
        except RunError as exc:
            self._remove_leftovers()
            self._fail(str(exc))
            return
        except (Aborted, process.Cancelled):
            self._remove_leftovers()
            self.result.outcome = Outcome.ABORTED
            self.result.error = "stopped by a signal before the backup was published"
            log.warning("run aborted", result="aborted")
            return
        except UploadFailed as exc:
            self._remove_leftovers()
            if exc.other_mode is None:
                self._explain(exc.failure)
            else:
                self._suggest(diagnose(exc.failure), exc.other_mode)
            return
        except (DumpFailed, WordPressError) as exc:
            self._remove_leftovers()  # files were archived and uploaded while it dumped
            self._suggest(
                exc.diagnosis
                if isinstance(exc, DumpFailed)
                else wordpress_diagnosis(exc.problems, exc.config_file)
            )
            return
        except Exception as exc:  # a bug: record it in the run's log rather than lose it
            log.exception("internal error")
            self._remove_leftovers()
            self._fail(f"internal error: {type(exc).__name__}: {exc}")
            return
        finally:
            self.remote.close()
            shutil.rmtree(work, ignore_errors=True)
        self.result.backup_id = self.backup_id
        self.result.archive = self.archive
        self.result.outcome = Outcome.WARNING if self.result.warnings else Outcome.SUCCESS
        log.info(
            "run finished",
            result=self.result.outcome,
            backup_id=self.backup_id,
            warnings=len(self.result.warnings),
        )

    def _check_sources(self) -> None:
        roots = [*self.job.sources, *([self.job.wordpress] if self.job.wordpress else [])]
        missing = [str(s) for s in roots if not s.exists()]
        if missing:
            raise RunError(f"source not found: {', '.join(missing)}")

    def _dump_databases(self, site: Site | None, work: Path, stop: threading.Event) -> list[Dump]:
        """Dump every database into the spool (while the files are archived)."""
        targets = targets_from_job(self.job_name, self.job)
        if site is not None:
            targets.append(site.target)
        dumps: list[Dump] = []
        for target in targets:
            target = dataclasses.replace(target, level=self.job.zstd_level)
            if stop.is_set():
                raise process.Cancelled("the run stopped")
            for item in dump(target, work, stop):
                if any(d.arcname == item.arcname for d in dumps):
                    raise RunError(f"two databases would be stored as {item.arcname}")
                dumps.append(item)
                for warning in item.warnings:
                    self._warn(f"database {item.name}", warning)
        return dumps

    def _check_destination(self) -> None:
        """Log in and reach the directory before any dump or archive is started."""
        try:
            with self._interrupt_on_cancel(self.remote):
                self.remote.check()
        except ftp.TRANSFER_ERRORS as exc:
            raise UploadFailed(self._failure_of(exc)) from None

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Aborted()

    def _uploaded(self, n: int) -> None:
        self._check_cancel()
        if self.progress.uploaded:
            self.progress.uploaded(n)

    def _fail(self, error: str) -> None:
        self.result.outcome = Outcome.FAILED
        self.result.error = error
        self.log.error("run failed", result="failed", error=error)

    def _archive_and_upload(
        self, work: Path, dumping: _Dumping
    ) -> tuple[ArchiveStats, list[Volume]]:
        """Write files, then the database dumps, into one archive whose volumes are
        uploaded while the next is written. The databases are dumped meanwhile; a
        failed dump stops the archive at once."""
        agent = self.config.agent
        # the agent's own files change while it runs: never archive them
        own = (agent.spool_dir, agent.log_dir, agent.state_dir)
        skip = frozenset(i for i in map(identity, own) if i is not None)
        roots = {source: list(self.job.exclude) for source in self.job.sources}
        if self.job.wordpress:
            roots[self.job.wordpress] = [*self.job.exclude, *self.job.wordpress_exclude]

        def entries() -> Iterator[Entry | Dump | Flush]:
            for root, patterns in roots.items():
                for entry in walk(root, patterns, self._warn, skip):
                    self._check_cancel()
                    dumping.check()
                    yield entry
            if dumping.running:  # send what is written while the dumps finish
                yield FLUSH
                pipeline.writer.cut()
            yield from dumping.result(self._check_cancel)

        pipeline = Pipeline(work, self.archive, self.job.volume_size, self._send)
        try:
            stats = write_archive(
                entries(),
                pipeline.writer,
                level=self.job.zstd_level,
                threads=self.job.zstd_threads,
                recipients=self.recipients,
                on_entry=self.progress.entry_archived,
                on_bytes=self.progress.archived,
                hashed=False,  # each volume is hashed: once over the data is enough
            )
        except BaseException as exc:
            upload_error = pipeline.abort()
            if upload_error is not None:  # the upload failed first; archiving only stopped
                raise upload_error from None
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise RunError(
                    f"the spool is full: no space left in {work} ([agent] spool_dir = "
                    f"{self.config.agent.spool_dir} in {self.config.path}); free space there "
                    "or point spool_dir at a larger disk: a run needs two volumes "
                    f"({2 * self.job.volume_size} bytes) plus the compressed database dumps"
                ) from exc
            if isinstance(exc, OSError):
                raise RunError(f"writing the archive to {work} failed: {exc}") from exc
            raise
        if self.progress.upload_started:
            self.progress.upload_started(stats.archive_bytes)
        volumes = pipeline.finish()
        self.log.info(
            "archive written",
            files=stats.files,
            directories=stats.directories,
            symlinks=stats.symlinks,
            bytes_read=stats.bytes_read,
            archive_bytes=stats.archive_bytes,
            volumes=len(volumes),
            warnings=len(stats.warnings),
        )
        return stats, volumes

    def _warn(self, path: str, reason: str) -> None:
        self.result.warnings.append(f"{path}: {reason}")
        self.log.warning("file skipped or stored with a warning", path=path, reason=reason)

    def _manifest(
        self, stats: ArchiveStats, volumes: list[Volume], dumps: list[Dump], site: Site | None
    ) -> bytes:
        """The manifest: what the backup holds and the SHA-256 of what is uploaded; no secrets."""
        return Manifest(
            job=self.job_name,
            backup_id=self.backup_id,
            created=self.started.isoformat(timespec="seconds"),
            finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            host=socket.gethostname(),
            agent_version=__version__,
            sources=[str(s) for s in self.job.sources],
            # the volumes, in order: their concatenation is `archive`
            files=[ManifestVolume(name=v.name, size=v.size, sha256=v.sha256) for v in volumes],
            archive=ManifestArchive(
                name=self.archive, size=stats.archive_bytes, volume_size=self.job.volume_size
            ),
            contents=Contents(
                files=stats.files,
                directories=stats.directories,
                symlinks=stats.symlinks,
                bytes=stats.bytes_read,
            ),
            databases=[
                DatabaseDump(
                    name=d.name,
                    engine=d.engine,
                    member=d.arcname,
                    size=d.size,
                    sha256=d.sha256 or None,
                    tables=d.tables,
                )
                for d in dumps
            ],
            warnings=len(self.result.warnings),
            encryption=Encryption(recipients=[fingerprint(r) for r in self.recipients])
            if self.recipients
            else None,
            wordpress=None
            if site is None
            else {
                "root": str(site.root),
                "version": site.version,
                "table_prefix": site.table_prefix,
                "database": site.database,
                "tables": "prefix" if site.target.table_prefix is not None else "all",
            },
        ).to_json()

    def _with_fallback(self, what: str, op: Callable[[ftp.FtpRemote], None]) -> None:
        """`op` on the current connection; with `fallback`, once more in the other mode.

        The first switch is kept for the rest of the run. Raises UploadFailed with
        what the FTP dialogue showed.
        """
        try:
            self._on(self.remote, op)
            return
        except ftp.TRANSFER_ERRORS as exc:
            failure = self._failure_of(exc)
        diagnosis = diagnose(failure)
        if not (self.job.fallback and diagnosis.flips_mode and not self.switched):
            raise UploadFailed(failure)
        failed, other = mode_name(self.passive), mode_name(not self.passive)
        self.log.warning(
            f"the data connection failed in {failed} mode; trying {other} mode once "
            "(fallback = true)",
            reason=diagnosis.what,
            during=what,
        )
        self.switched = True
        self.remote = ftp.FtpRemote(self.dest, not self.passive, self.cancel)
        self.remotes.append(self.remote)
        try:
            self._on(self.remote, op)
        except ftp.TRANSFER_ERRORS as exc:
            second = self._failure_of(exc)
            raise UploadFailed(
                failure, ProbeResult(not self.passive, False, second.error or "the upload failed")
            ) from None
        change = passive_setting(not self.passive)
        note = (
            f"the data connection failed in {failed} mode, {other} mode worked "
            f"(fallback). To skip the failed attempt next time, set {change} under "
            f"[jobs.{self.job_name}] in {self.config.path}"
        )
        self.result.warnings.append(f"fallback to {other} mode: {note}")
        self.result.suggestion = f"Job '{self.job_name}': {note}."
        self.log.warning("fallback", text=self.result.suggestion, change=change)

    def _on(self, remote: ftp.FtpRemote, op: Callable[[ftp.FtpRemote], None]) -> None:
        """`op(remote)`; a cancel request breaks off its blocking I/O at once."""
        try:
            with self._interrupt_on_cancel(remote):
                op(remote)
        except (VerifyFailed, ftp.LocalReadError) as exc:
            raise RunError(str(exc)) from exc

    def _failure_of(self, exc: BaseException) -> Failure:
        """What the current connection's last failed operation showed; Aborted if cancelled."""
        self.remote.close()
        if self.cancel.is_set():  # the error is our own interruption
            raise Aborted() from exc
        assert self.remote.last_failure is not None
        return self.remote.last_failure

    @contextlib.contextmanager
    def _interrupt_on_cancel(self, remote: ftp.FtpRemote) -> Iterator[None]:
        """While inside, a cancel request breaks off the remote's blocking I/O at once."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                if self.cancel.is_set():
                    remote.interrupt()
                    return

        watcher = threading.Thread(target=watch, name="ftp-cancel", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()

    def _send(self, volume: Volume) -> None:
        """Upload one volume (in the sending thread) while the archiver writes the next."""
        if volume.index == 1 and self.progress.upload_started:
            self.progress.upload_started(None)
        self._with_fallback(volume.name, functools.partial(self._send_volume, volume))

    def _send_volume(self, volume: Volume, remote: ftp.FtpRemote) -> None:
        """Under a temporary name, renamed when complete, then size and checksum checked."""
        temp = self._temp_name(volume.name)
        self._will_write(temp)
        self._will_write(volume.name)
        remote.upload_file(volume.path, temp, self._uploaded)
        remote.rename(temp, volume.name)
        remote.call("check", lambda s, _: self._verify(s, volume))

    def _temp_name(self, name: str) -> str:
        """After a fallback, another temporary name than the failed attempt's."""
        return temp_name(name, mode_name(self.remote.passive) if self.switched else "")

    def _will_write(self, name: str) -> None:
        """Remember a remote name, to remove it should the run fail."""
        if name not in self.written:
            self.written.append(name)

    def _publish(self, remote: ftp.FtpRemote, manifest_data: bytes) -> None:
        """The manifest last: only now does the backup count as complete."""
        manifest = manifest_name(self.backup_id)
        temp = self._temp_name(manifest)
        self._will_write(temp)
        self._will_write(manifest)
        remote.call("manifest upload", lambda s, _: s.upload_bytes(manifest_data, temp))
        remote.rename(temp, manifest)
        self.written.clear()
        self.log.info("backup published", archive=self.archive, manifest=manifest)

    def _verify(self, session: ftp.FtpSession, volume: Volume) -> None:
        """SIZE, and the server's own checksum where FEAT offers HASH, XSHA256 or XMD5."""
        name = volume.name
        try:
            size = session.size(name)
        except ftplib.error_perm as exc:
            if replies.code_of(exc) not in replies.UNSUPPORTED_HERE or replies.is_oops(str(exc)):
                raise
            self._warn(name, "the server does not support SIZE; upload size not verified")
        else:
            if size != volume.size:
                raise VerifyFailed(
                    f"size check failed: the server reports {size} bytes for {name}, "
                    f"{volume.size} were sent"
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
            local = volume.sha256
        else:
            with volume.path.open("rb") as handle:
                local = hashlib.file_digest(handle, algorithm).hexdigest()
        if digest != local:
            raise VerifyFailed(
                f"checksum mismatch: the server's {algorithm} of {name} is {digest}, "
                f"the volume's is {local}"
            )
        self.log.info("checksum verified by the server", name=name, algorithm=algorithm)

    def _prune(self, remote: ftp.FtpRemote) -> None:
        """Delete this job's oldest complete backups beyond `keep`; failures are warnings."""
        try:
            names = remote.call("listing", lambda session, _attempt: session.names())
            backups = complete_backups(self.job_name, names)
            doomed = select_for_deletion(backups, retention_policy(self.dest))
            for backup in doomed:
                # manifest first: from that moment the backup no longer counts as complete
                remote.delete(backup.names)
                self.log.info("old backup deleted", backup_id=backup.backup_id)
            self.log.info("retention applied", kept=len(backups) - len(doomed), deleted=len(doomed))
            grace = dt.timedelta(hours=self.dest.partial_grace_hours)
            stale = stale_leftovers(self.job_name, names, dt.datetime.now(dt.UTC), grace)
            if stale:
                remote.delete(stale)
                self.log.info("removed uploads left by crashed runs", names=stale)
        except ftp.TRANSFER_ERRORS as exc:
            self._warn(self.dest.directory, f"retention failed, nothing more deleted: {exc}")

    def _remove_abandoned(self) -> None:
        """After a fallback, what the failed mode's attempt left on the server (vsftpd
        keeps the empty file it created before it failed to connect back)."""
        if not self.switched:
            return
        abandoned = sorted(self.remotes[0].touched - self.remote.touched)
        if not abandoned:
            return
        try:
            self.remote.delete(abandoned)
            self.log.info("removed what the failed mode's attempt left", names=abandoned)
        except ftp.TRANSFER_ERRORS as exc:
            self._warn(self.dest.directory, f"could not remove {', '.join(abandoned)}: {exc}")

    def _remove_leftovers(self) -> None:
        """Best effort, on a fresh connection: delete what this run uploaded. The run's
        connection is closed first, so a suggestion logged after this is the last event.
        Only names the server may hold are deleted: a run that uploaded nothing does
        not log in again (a second failed login can trip fail2ban)."""
        self.remote.close()
        touched = set().union(*(remote.touched for remote in self.remotes))
        names = [name for name in self.written if name in touched]
        if not names:
            return
        self.log.info("removing incomplete upload", names=names)
        # one attempt, broken off after `timeout` whatever the server does: a run that
        # was stopped must exit soon (what stays is removed by a later run's retention)
        remote = ftp.FtpRemote(self.dest.model_copy(update={"retries": 0}), self.remote.passive)
        watchdog = threading.Timer(self.dest.timeout, remote.interrupt)
        watchdog.start()
        try:
            remote.delete(names)
        except ftp.TRANSFER_ERRORS:
            self.log.warning("could not remove incomplete upload from the server", names=names)
        finally:
            watchdog.cancel()
            remote.close()

    def _explain(self, failure: Failure) -> None:
        """Diagnose an FTP failure; probe the other mode before suggesting a flip."""
        diagnosis = diagnose(failure)
        probe = None
        if diagnosis.flips_mode:
            other = bool(diagnosis.passive_should_be)
            self.log.info(f"probing {mode_name(other)} mode with a directory listing")
            probe = ftp.probe(self.dest, other)
            self.log.info(
                "probe finished", probe_mode=mode_name(other), ok=probe.ok, detail=probe.detail
            )
        self._suggest(diagnosis, probe)

    def _suggest(self, diagnosis: Diagnosis, probe: ProbeResult | None = None) -> None:
        """Fail the run with a diagnosis; the suggestion is the run's last event."""
        text = suggestion_text(
            diagnosis, self.job_name, self.job.destination, self.config.path, probe
        )
        self.result.outcome = Outcome.FAILED
        self.result.error = diagnosis.what
        self.result.suggestion = text
        self.log.error(
            "run failed", result="failed", error=diagnosis.what, category=str(diagnosis.category)
        )
        self.log.warning(
            "suggestion",
            text=text,
            category=str(diagnosis.category),
            evidence=list(diagnosis.evidence),
            change=(
                None
                if not diagnosis.flips_mode or (probe is not None and not probe.ok)
                else passive_setting(bool(diagnosis.passive_should_be))
            ),
            verified=None if probe is None else probe.ok,
        )


class _Dumping:
    """The databases dumped in a thread (with the run's log context) while files are
    archived; leaving the block stops a dump still running and waits for it."""

    def __init__(
        self, dump_all: Callable[[Site | None, Path, threading.Event], list[Dump]], *args: Any
    ) -> None:
        self.stop = threading.Event()
        self.dumps: list[Dump] = []
        self.error: BaseException | None = None
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run, args=(self._run, dump_all, *args), name="dump", daemon=True
        )

    def _run(self, dump_all: Callable[..., list[Dump]], *args: Any) -> None:
        try:
            self.dumps = dump_all(*args, self.stop)
        except BaseException as exc:  # raised in the archiving thread by check()/result()
            self.error = exc

    def __enter__(self) -> _Dumping:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def check(self) -> None:
        """Raise the dump's failure, if it has failed already."""
        if self.error is not None:
            raise self.error

    def result(self, while_waiting: Callable[[], None]) -> list[Dump]:
        """The dumps, once finished; `while_waiting` is called meanwhile (to abort)."""
        while self.thread.is_alive():
            self.thread.join(0.2)
            while_waiting()
        self.check()
        return self.dumps


class VerifyFailed(Exception):
    """The server holds a different size or checksum than was sent."""


class UploadFailed(Exception):
    """The FTP dialogue failed; `other_mode` is set when `fallback` tried it too and failed."""

    def __init__(self, failure: Failure, other_mode: ProbeResult | None = None) -> None:
        super().__init__(failure.error)
        self.failure = failure
        self.other_mode = other_mode
