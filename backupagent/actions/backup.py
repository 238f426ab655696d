"""One backup run of one job, top to bottom: check the sources and the destination,
dump the databases while the files are archived, publish each volume as it is
written, publish the manifest last, apply retention; or fail and explain why.

The steps live elsewhere (sources/, archive.py, volumes.py, destinations/, manifest.py,
actions/prune.py); this module orders them and turns each way of failing into a
result: what failed, the evidence, the change to make.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from backupagent import __version__, trust
from backupagent.actions import increments, prune
from backupagent.actions.fanout import Fanout, Member
from backupagent.archive import FLUSH, ArchiveStats, Flush, write_archive
from backupagent.config import Config, config_warnings
from backupagent.crypto import AGE_SUFFIX, encrypt, fingerprint
from backupagent.destinations import open_destination
from backupagent.destinations.base import Destination, DestinationError, Hooks
from backupagent.diagnosis import (
    Diagnosis,
    ProbeResult,
    hook_diagnosis,
    suggestion_text,
    wordpress_diagnosis,
)
from backupagent.hooks import run_hook
from backupagent.limits import connection_slots
from backupagent.manifest import Archive as ManifestArchive
from backupagent.manifest import Contents, DatabaseDump, Encryption, Manifest
from backupagent.manifest import Volume as ManifestVolume
from backupagent.outcome import DestinationResult, Outcome, RunResult, Trigger
from backupagent.progress import Progress, logged_progress
from backupagent.recording import recorded_run
from backupagent.retention import (
    RUN_ID_PATTERN,
    archive_name,
    contents_name,
    index_name,
    manifest_name,
)
from backupagent.sources.databases import Dump, DumpFailed, dump, targets_from_job
from backupagent.sources.files import Entry, Scan, job_roots, own_directories
from backupagent.sources.wordpress import Site, WordPressError, read_site
from backupagent.volumes import Pipeline, Volume
from backupagent.workers import Cancelled, Worker, raise_if_cancelled

# (hooks, cancel) -> the run's destination; the default opens the job's configured one
DestinationFactory = Callable[[Hooks, threading.Event], Destination]
# (site, spool directory, stop) -> the dumps written there
Dumper = Callable[[Site | None, Path, threading.Event], list[Dump]]


class RunError(Exception):
    """A failure outside the destination (missing source, local disk), in plain words."""


def run_job(
    config: Config,
    job_name: str,
    progress: Progress | None = None,
    *,
    trigger: str = Trigger.MANUAL,
    cancel: threading.Event | None = None,
    destination: DestinationFactory | None = None,
    dumper: Dumper | None = None,
) -> RunResult:
    """Run `job_name` once and record it in the history.

    Raises state.JobLocked if the job is already running (here or in another process).
    Setting `cancel` aborts the run: what it uploaded and spooled is removed.
    `destination` and `dumper` replace the configured destination and the database
    dumps (tests use them to watch a run or to put it somewhere else).
    """
    with recorded_run(config, job_name, Trigger(trigger)) as (result, started):
        _remove_stale_spool(config.agent.spool_dir / job_name, job_name)
        run = _Run(config, job_name, result, started, progress, cancel)
        if destination is not None:
            opened = [destination(run.hooks_for("test"), run.cancel)]
        else:
            opened = [
                open_destination(config, job_name, run.hooks_for(name), run.cancel, name)
                for name in config.jobs[job_name].destination_names
            ]
        run.execute(Fanout(opened, config.jobs[job_name].require), dumper or run.dump_databases)
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
    """The job's settings and the result being filled in, shared by the steps."""

    def __init__(
        self,
        config: Config,
        job_name: str,
        result: RunResult,
        started: dt.datetime,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> None:
        self.config = config
        self.job_name = job_name
        self.job = config.jobs[job_name]
        self.result = result
        self.started = started
        self.progress = progress or logged_progress(config.agent.progress_interval)
        self.cancel = cancel or threading.Event()
        self.backup_id = f"{job_name}-{result.run_id}"
        self.recipients = config.recipients_for(job_name)
        # the uploaded archive's name says whether it is encrypted
        self.archive = archive_name(self.backup_id) + (AGE_SUFFIX if self.recipients else "")
        self.increment: increments.Increment | None = None  # incremental jobs only
        self.stop_dumps = threading.Event()  # set when the run ends: a dump still running stops
        self.log = structlog.get_logger("backupagent.run")

    def hooks_for(self, name: str) -> Hooks:
        """What destination `name` reports goes into this run's result."""
        several = len(self.job.destination_names) > 1
        return Hooks(
            warn=lambda subject, reason: self.warn(
                f"{name}: {subject}" if several else subject, reason
            ),
            advise=self.advise,
        )

    def execute(self, destination: Fanout, dump_databases: Dumper) -> None:
        """The job's hooks around the steps: `before` first (when it fails, nothing else
        runs), `after` whenever the run got past it, `on_failure` after a failed or
        aborted run."""
        for warning in config_warnings(self.config, self.job_name):
            self.log.warning("unsafe setting", detail=str(warning))
        self.log.info(
            "run started",
            **destination.describe(),
            sources=[str(s) for s in self.job.sources],
            agent_version=__version__,
        )
        try:
            if self._before(destination):
                try:
                    self._steps(destination, dump_databases)
                finally:
                    self._after("after")
            else:
                destination.close()
        finally:
            if self.result.outcome in (Outcome.FAILED, Outcome.ABORTED):
                self._after("on_failure")

    def _before(self, destination: Fanout) -> bool:
        """The `before` hook; False (the run failed, with its verdict) when it failed."""
        hook = self.job.before
        if hook is None:
            return True
        try:
            ran = run_hook("before", hook, self._hook_variables("before"), self.cancel)
        except Cancelled as exc:
            self._end_with(exc, destination)
            return False
        if not ran.ok:
            self._suggest(hook_diagnosis(self.job_name, ran.verdict, ran.command, ran.tail))
        return ran.ok

    def _after(self, name: str) -> None:
        """`after` or `on_failure`: not stopped by a signal (it may have to undo what
        `before` did, such as a maintenance mode); when it fails, a warning."""
        hook = self.job.after if name == "after" else self.job.on_failure
        if hook is None:
            return
        ran = run_hook(name, hook, self._hook_variables(name))
        if not ran.ok:
            self.result.warnings.append(f"{name} hook: {ran.verdict}")
            if self.result.outcome == Outcome.SUCCESS:
                self.result.outcome = Outcome.WARNING

    def _hook_variables(self, name: str) -> dict[str, str]:
        """What a hook is told about the run (README: Hooks)."""
        published = self.result.ok and name != "before"
        return {
            "BACKUPAGENT_HOOK": name,
            "BACKUPAGENT_JOB": self.job_name,
            "BACKUPAGENT_RUN_ID": self.result.run_id,
            "BACKUPAGENT_CONFIG": str(self.config.file_of(f"jobs.{self.job_name}")),
            "BACKUPAGENT_RESULT": "running" if name == "before" else str(self.result.outcome),
            "BACKUPAGENT_BACKUP_ID": self.backup_id if published else "",
            "BACKUPAGENT_ARCHIVE": self.archive if published else "",
            "BACKUPAGENT_ERROR": self.result.error or "",
        }

    def _steps(self, destination: Fanout, dump_databases: Dumper) -> None:
        """The steps in order; each way of failing ends the run with its explanation."""
        work = self.config.agent.spool_dir / self.job_name / self.backup_id
        scan: Scan | None = None
        held = contextlib.ExitStack()  # the destinations' connection slots
        try:
            self._check_sources()
            site = read_site(self.job.wordpress, self.job) if self.job.wordpress else None
            scan = self._scan()
            reading = None
            if self.job.incremental:  # decoded while the destinations log in
                reading = Worker("index", increments.read_local, self.config, self.job_name)
                reading.start()
            limits = self.config.connection_limits(self.job.destination_names)
            held.enter_context(connection_slots(self.config.agent.state_dir, limits, self.cancel))
            destination.check()  # a wrong password shows before any dump or archive
            if reading is not None:
                self.increment = increments.plan(
                    self.config,
                    self.job_name,
                    destination,
                    dt.datetime.now(dt.UTC),
                    reading.join(self._check_cancel),
                )
            work.mkdir(mode=0o700)
            dumping = Worker("dump", dump_databases, site, work, self.stop_dumps)
            with _running(dumping, self.stop_dumps):
                stats, volumes = self._archive_and_upload(destination, work, dumping, scan)
                dumps = dumping.join(self._check_cancel)
            self.result.stats = stats
            self.result.warnings.extend(stats.warnings)
            sealed = self.increment.seal() if self.increment is not None else None
            # both indexes name every path: encrypted like the archive, if it is
            stat_index = None if sealed is None else self._as_uploaded(index_name, sealed.uploaded)
            if stat_index is not None:
                destination.publish_bytes(stat_index.data, stat_index.name)
            listing = self._as_uploaded(contents_name, stats.contents)
            destination.publish_bytes(listing.data, listing.name)
            manifest = self._manifest(stats, volumes, dumps, site, sealed, listing, stat_index)
            destination.publish_bytes(manifest, manifest_name(self.backup_id))
            destination.commit()
            self.result.manifest_sha256 = hashlib.sha256(manifest).hexdigest()
            if sealed is not None and self.increment is not None:
                increments.save(self.config, self.job_name, self.backup_id, sealed.index)
                self.increment.known[self.backup_id] = self.increment.decided.parent
            for member in destination.live:
                self.log.info(
                    "backup published",
                    archive=self.archive,
                    manifest=manifest_name(self.backup_id),
                    destination=member.name,
                )
                self._prune(member.destination)
            if self.increment is not None:
                increments.remember_parents(self.config, self.job_name, self.increment.known)
        except BaseException as exc:
            destination.rollback()  # files may be uploaded while a dump fails, say
            self._record_destinations(destination, published=False)
            self._end_with(exc, destination)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            if scan is not None:
                scan.close()
            destination.close()
            held.close()
            shutil.rmtree(work, ignore_errors=True)
        self.result.backup_id = self.backup_id
        self.result.archive = self.archive
        self._record_destinations(destination, published=True)
        for member in destination.failed:  # require = "any": the others have the backup
            assert member.error is not None
            self.warn(member.name, f"this destination failed: {member.error}")
            self._advise_on(member)
        self.result.outcome = Outcome.WARNING if self.result.warnings else Outcome.SUCCESS
        self.log.info(
            "run finished",
            result=self.result.outcome,
            backup_id=self.backup_id,
            warnings=len(self.result.warnings),
        )

    def _record_destinations(self, fanout: Fanout, published: bool) -> None:
        self.result.destinations = [
            DestinationResult(
                m.name,
                Outcome.FAILED if m.error else (Outcome.SUCCESS if published else Outcome.ABORTED),
                str(m.error) if m.error else None,
            )
            for m in fanout.members
        ]

    def _advise_on(self, member: Member) -> None:
        """A failed destination's diagnosis, logged as a suggestion and kept in its result."""
        assert member.error is not None
        explained = member.error.explain()
        if explained is None:
            return
        diagnosis, probe = explained
        self._suggestion(diagnosis, probe, member.name)

    def _end_with(self, exc: BaseException, fanout: Fanout) -> None:
        """The result of a run that failed with `exc` (after the rollback, so that a
        suggestion is the run's last event)."""
        match exc:
            case RunError():
                self._fail(str(exc))
            case Cancelled():
                self.result.outcome = Outcome.ABORTED
                self.result.error = "stopped by a signal before the backup was published"
                self.log.warning("run aborted", result="aborted")
            case DumpFailed():
                self._suggest(exc.diagnosis)
            case WordPressError():
                self._suggest(wordpress_diagnosis(exc.problems, exc.config_file))
            case DestinationError():
                failed = fanout.failed or [Member(fanout.members[0].destination, exc)]
                for member in failed[:-1]:  # require = "any": each failed in turn
                    self._advise_on(member)
                last = failed[-1]
                assert last.error is not None
                explained = last.error.explain()
                if explained is None:
                    self._fail(str(last.error))
                else:
                    self._suggest(*explained, destination=last.name)
            case Exception():  # a bug: record it in the run's log rather than lose it
                self.log.exception("internal error")
                self._fail(f"internal error: {type(exc).__name__}: {exc}")

    def _check_sources(self) -> None:
        roots = [*self.job.sources, *([self.job.wordpress] if self.job.wordpress else [])]
        missing = [str(s) for s in roots if not s.exists()]
        if missing:
            raise RunError(f"source not found: {', '.join(missing)}")
        for root in roots:
            try:
                os.close(trust.open_directory(root))
            except trust.Untrusted as exc:
                raise RunError(str(exc)) from None
            except OSError:
                pass  # the walk says what it cannot read

    def dump_databases(self, site: Site | None, work: Path, stop: threading.Event) -> list[Dump]:
        """Dump every database into the spool (while the files are archived)."""
        targets = targets_from_job(self.job_name, self.job)
        if site is not None:
            targets.append(site.target)
        dumps: list[Dump] = []
        for target in targets:
            target = dataclasses.replace(target, level=self.job.zstd_level)
            raise_if_cancelled(stop)
            for item in dump(target, work, stop):
                if any(d.arcname == item.arcname for d in dumps):
                    raise RunError(f"two databases would be stored as {item.arcname}")
                dumps.append(item)
                for warning in item.warnings:
                    self.warn(f"database {item.name}", warning)
        return dumps

    def _check_cancel(self) -> None:
        raise_if_cancelled(self.cancel)

    def _fail(self, error: str) -> None:
        self.result.outcome = Outcome.FAILED
        self.result.error = error
        self.log.error("run failed", result="failed", error=error)

    def warn(self, path: str, reason: str) -> None:
        self.result.warnings.append(f"{path}: {reason}")
        self.log.warning("file skipped or stored with a warning", path=path, reason=reason)

    def advise(self, warning: str, suggestion: str) -> None:
        self.result.warnings.append(warning)
        self.result.suggestion = suggestion

    def _scan(self) -> Scan:
        """The walk of the sources, started ahead of the archive (it runs while the
        destinations log in)."""
        skip = own_directories(self.config.agent)
        roots = job_roots(self.job)
        return Scan(roots, self.warn, skip, with_stat=self.job.incremental).start()

    def _archive_and_upload(
        self, destination: Fanout, work: Path, dumping: Worker[list[Dump]], scan: Scan
    ) -> tuple[ArchiveStats, list[Volume]]:
        """Write files, then the database dumps, into one archive whose volumes are
        published while the next is written. The databases are dumped meanwhile; a
        failed dump stops the archive at once."""
        increment = self.increment

        def entries() -> Iterator[Entry | Dump | Flush]:
            for batch in scan.batches():
                kept = [e for e, _ in batch] if increment is None else increment.changed(batch)
                for entry in kept:
                    self._check_cancel()  # per entry: the one before may have been 10 GB
                    dumping.check()
                    yield entry
            if dumping.running:  # send what is written while the dumps finish
                yield FLUSH
                pipeline.writer.cut()
            yield from dumping.join(self._check_cancel)

        def send(volume: Volume) -> None:
            """One volume, in the sending thread, while the archiver writes the next."""
            if volume.index == 1 and self.progress.upload_started:
                self.progress.upload_started(None)
            destination.publish_file(volume.path, volume.name, volume.sha256, self._uploaded)

        pipeline = Pipeline(work, self.archive, self.job.volume_size, send)
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
                indexed=True,
                volumes=pipeline.writer,
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
        if increment is not None:
            increment.seal()  # while the last volume uploads
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

    def _uploaded(self, n: int) -> None:
        self._check_cancel()
        if self.progress.uploaded:
            self.progress.uploaded(n)

    def _as_uploaded(self, name: Callable[[str, bool], str], data: bytes) -> _Upload:
        """An index as it is uploaded: named by `name(backup_id, encrypted)`, encrypted
        to the job's recipients when it has some."""
        if self.recipients:
            return _Upload(name(self.backup_id, True), encrypt(data, self.recipients))
        return _Upload(name(self.backup_id, False), data)

    def _manifest(
        self,
        stats: ArchiveStats,
        volumes: list[Volume],
        dumps: list[Dump],
        site: Site | None,
        sealed: increments.Sealed | None,
        listing: _Upload,
        stat_index: _Upload | None,
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
                    rows=d.rows,
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
            kind=self.increment.kind if self.increment else "full",
            parent=self.increment.decided.parent if self.increment else None,
            deleted=sealed.deleted if sealed else [],
            index=None if stat_index is None else stat_index.volume(),
            index_sha256=None if sealed is None else hashlib.sha256(sealed.index).hexdigest(),
            content_index=listing.volume(),
        ).to_json()

    def _prune(self, destination: Destination) -> None:
        """Retention after a published backup; a failure is a warning, not a failed run."""
        try:
            if self.increment is None:
                prune.apply(destination, self.job_name)
            else:
                prune.apply(destination, self.job_name, self.increment.known)
        except DestinationError as exc:
            self.warn(
                str(destination.describe().get("directory", destination.name)),
                f"retention failed, nothing more deleted: {exc}",
            )

    def _suggest(
        self,
        diagnosis: Diagnosis,
        probe: ProbeResult | None = None,
        destination: str | None = None,
    ) -> None:
        """Fail the run with a diagnosis; the suggestion is the run's last event."""
        self.result.outcome = Outcome.FAILED
        self.result.error = diagnosis.what
        self.log.error(
            "run failed", result="failed", error=diagnosis.what, category=str(diagnosis.category)
        )
        self._suggestion(diagnosis, probe, destination or self.job.destination_names[0])

    def _suggestion(self, diagnosis: Diagnosis, probe: ProbeResult | None, name: str) -> None:
        """The suggestion for a failure at destination `name`: logged as an event, kept
        in that destination's result and added to the run's."""
        text = suggestion_text(
            diagnosis,
            self.job_name,
            name,
            self.config.path,
            probe,
            self.config.mode_table(self.job_name, name),
            self.config.files,
        )
        several = len(self.job.destination_names) > 1
        self.log.warning(
            "suggestion",
            text=text,
            category=str(diagnosis.category),
            evidence=list(diagnosis.evidence),
            change=diagnosis.change(probe),
            verified=None if probe is None else probe.ok,
            **({"destination": name} if several else {}),
        )
        for entry in self.result.destinations:
            if entry.name == name:
                entry.suggestion = text
        self.result.suggestion = "\n\n".join(filter(None, [self.result.suggestion, text]))


@dataclasses.dataclass(frozen=True)
class _Upload:
    name: str
    data: bytes

    def volume(self) -> ManifestVolume:
        """How the manifest pins it."""
        return ManifestVolume(
            name=self.name, size=len(self.data), sha256=hashlib.sha256(self.data).hexdigest()
        )


@contextlib.contextmanager
def _running(worker: Worker[list[Dump]], stop: threading.Event) -> Iterator[None]:
    """`worker` started; on leaving, told to stop and waited for."""
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.wait()
