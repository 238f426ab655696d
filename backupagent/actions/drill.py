"""`backupagent drill` and scheduled drills: would the newest backup really restore?

The newest backup (with the backups it builds on) is downloaded, checked against its
manifest and extracted into a scratch directory of the spool; each MySQL/MariaDB and
PostgreSQL dump is loaded into a new scratch database `JOB_drill_…` (on the job's own
server, or on a throwaway local one with drill_server = "local"), each SQLite copy is
opened, and every table's rows are compared with the count the manifest recorded at
dump time. Scratch databases and directory are removed whatever happens; the run is
recorded like any other (trigger `drill`).

A drill never touches a live database: a scratch database is created new (CREATE
fails if the name exists) under a random name that is none the job backs up, and on
the job's own server it loads only dumps of a backup this host made, by the SHA-256 of
its manifest in the history: a dump from the network loads only where it can harm
nothing else (a throwaway server).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from backupagent.actions.restore import fetching, live_databases
from backupagent.config import Config, MysqlDatabase, PostgresDatabase
from backupagent.crypto import CryptoError, load_identities
from backupagent.destinations.base import DestinationError
from backupagent.limits import connection_slots
from backupagent.manifest import DatabaseDump
from backupagent.outcome import Outcome, Trigger
from backupagent.recording import recorded_run
from backupagent.retrieve import RestoreError, extract_chain, private_directory
from backupagent.sources import databases, servers
from backupagent.sources.databases import DumpFailed, Target, targets_from_job
from backupagent.sources.servers import ServerFailed
from backupagent.state import History
from backupagent.summary import count
from backupagent.workers import Cancelled

LOADED_ENGINES = ("mysql", "postgresql")  # dumps loaded into a scratch database
MEMBER = re.compile(r"databases/[^/\x00]{1,255}")  # where a manifest may say a dump is


class DrillError(Exception):
    """The drill cannot go on, in plain words."""


@dataclass
class DumpDrill:
    """How one dump of the backup fared."""

    member: str  # databases/NAME.sql|.pgdump|.sqlite3
    engine: str
    into: str | None = None  # the scratch database it was loaded into
    tables: int = 0  # tables whose rows were compared
    rows: int = 0  # rows loaded into them
    compared: bool = True  # False: the backup recorded no counts (an older agent)
    problems: list[str] = field(default_factory=list)


@dataclass
class Drilled:
    """What `drill` found; `outcome` as the history records it."""

    outcome: str
    message: str
    log_path: Path
    backup_id: str | None = None
    files: int = 0
    dumps: list[DumpDrill] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.SUCCESS, Outcome.WARNING)


def differences(recorded: Mapping[str, int], loaded: Mapping[str, int]) -> list[str]:
    """Each table whose rows after the load differ from its count at dump time."""
    found = []
    for table in sorted(recorded):
        want, got = recorded[table], loaded.get(table)
        if got is None:
            found.append(f"table {table}: missing after the load ({want} rows at dump time)")
        elif got != want:
            found.append(f"table {table}: {got} rows loaded, {want} counted at dump time")
    return found


def said(failed: DumpFailed) -> str:
    """The database tool's last error line (bounded), else what failed."""
    lines = [line.strip() for line in failed.diagnosis.evidence if line.strip()]
    errors = [line for line in lines if "error" in line.lower()] or lines
    return errors[-1][:500] if errors else failed.diagnosis.what


def scratch_name(job: str) -> str:
    """`JOB_drill_` and 8 random hex digits: a valid, unquoted-safe name in MySQL (64
    characters at most) and PostgreSQL (63)."""
    slug = re.sub(r"[^0-9A-Za-z_]", "_", job)[:40]
    return f"{slug}_drill_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class _Engine:
    create: Callable[[Target, Path, str | None], None]
    load: Callable[[Target, Path, Path, threading.Event | None], None]
    count: Callable[[Target, Path], dict[str, int]]
    drop: Callable[[Target, Path], None]


def _load_mysql(target: Target, dump: Path, spool: Path, cancel: threading.Event | None) -> None:
    with dump.open("rb") as source:
        databases.load_mysql(target, source, create=False, cancel=cancel, events=False)


def _load_postgres(target: Target, dump: Path, spool: Path, cancel: threading.Event | None) -> None:
    databases.load_postgres(target, dump, spool, create=False, cancel=cancel)


ENGINES = {
    "mysql": _Engine(
        databases.create_mysql, _load_mysql, databases.count_mysql, databases.drop_mysql
    ),
    "postgresql": _Engine(
        databases.create_postgres,
        _load_postgres,
        databases.count_postgres,
        databases.drop_postgres,
    ),
}


def drill(
    config: Config,
    job: str,
    cancel: threading.Event | None = None,
    identities: list[Any] | None = None,
    destination: str | None = None,
) -> Drilled:
    """Drill the newest backup of `job` on its destination `destination` (by default its
    first). Raises state.JobLocked while the job runs, SetupError."""
    log = structlog.get_logger("backupagent.drill")
    spec = config.jobs[job]
    with recorded_run(config, job, Trigger.DRILL) as (result, _started):
        drilled = Drilled(Outcome.FAILED, "", result.log_path)
        try:
            if identities is None and spec.drill_identity is not None:
                identities = load_identities(spec.drill_identity)
            _drill(config, job, drilled, cancel, identities, destination)
        except (DrillError, RestoreError, DestinationError, CryptoError, ServerFailed) as exc:
            drilled.message = str(exc) or type(exc).__name__
        except DumpFailed as exc:
            drilled.message = f"{exc.diagnosis.what}: {exc.diagnosis.advice}"
        except Cancelled:
            drilled.outcome, drilled.message = Outcome.ABORTED, "stopped before the drill ended"
        except BaseException:  # recorded_run records it as an internal error
            drilled.message = "internal error (see the log)"
            raise
        result.backup_id = drilled.backup_id
        result.outcome = drilled.outcome
        if not drilled.ok:
            result.error = drilled.message
        elif drilled.outcome == Outcome.WARNING:
            result.warnings.append(drilled.message)
        (log.info if drilled.ok else log.error)(
            "drill finished",
            result=str(drilled.outcome),
            detail=drilled.message,
            server=spec.drill_server,
        )
    return drilled


def _drill(
    config: Config,
    job: str,
    drilled: Drilled,
    cancel: threading.Event | None,
    identities: list[Any] | None,
    destination: str | None,
) -> None:
    spec = config.jobs[job]
    log = structlog.get_logger("backupagent.drill")
    spool = private_directory(config.agent.spool_dir / job, "spool_dir")
    scratch = Path(tempfile.mkdtemp(prefix="drill-", dir=spool))  # 0700, its own
    try:
        files = scratch / "files"
        name = destination or spec.destination_names[0]
        with contextlib.ExitStack() as stack:
            places = _Places(config, job, stack)
            with (
                connection_slots(config.agent.state_dir, config.connection_limits([name]), cancel),
                fetching(config, job, "latest", identities, destination, cancel) as source,
            ):
                backup = source.backup
                drilled.backup_id = backup.backup_id
                assert backup.manifest is not None  # chosen backups are readable
                dumps = backup.manifest.databases
                if spec.drill_server == "configured" and any(
                    d.engine in LOADED_ENGINES for d in dumps
                ):
                    _made_here(config, job, backup.backup_id, backup.sha256)
                for entry in dumps:  # before a byte is downloaded
                    _may_create(entry, places, scratch)
                report = extract_chain(source, files, identities)
                drilled.files = report.files
                log.info("drill extracted", backup_id=backup.backup_id, files=report.files)
            for entry in dumps:
                drilled.dumps.append(_dump(entry, files, scratch, places, cancel))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    problems = [f"{d.member}: {p}" for d in drilled.dumps for p in d.problems]
    compared = [d for d in drilled.dumps if d.compared and not d.problems]
    uncompared = [d.member for d in drilled.dumps if not d.compared]
    summary = f"{drilled.backup_id}: {count(drilled.files, 'file')} restored; " + (
        f"{count(len(drilled.dumps), 'database dump')} loaded, "
        f"{count(sum(d.tables for d in compared), 'table')} with the rows counted at dump "
        f"time ({count(sum(d.rows for d in compared), 'row')})"
        if drilled.dumps
        else "no database dumps"
    )
    if problems:
        drilled.outcome = Outcome.FAILED
        drilled.message = f"{drilled.backup_id}: " + "; ".join(problems)
    elif uncompared:
        drilled.outcome = Outcome.WARNING
        drilled.message = (
            f"{summary}; {', '.join(uncompared)} loaded but not compared: the backup "
            "recorded no row counts (made by an older backupagent)"
        )
    else:
        drilled.outcome, drilled.message = Outcome.SUCCESS, summary


def _made_here(config: Config, job: str, backup_id: str, sha256: str) -> None:
    """Refuse a backup whose manifest is not the one this host published."""
    with History(config.agent.state_dir) as history:
        made = history.manifest_made(job, backup_id)
    if made != sha256:
        why = (
            "this host has no record of making it (the history holds no SHA-256 of its "
            "manifest: a backup from another host, or from before backupagent kept them)"
            if made is None
            else "its manifest differs from the one this host published"
        )
        raise DrillError(
            f"{backup_id}: {why}, so its dumps are not loaded into the job's database "
            'server; set drill_server = "local" to drill it on a throwaway server'
        )


def _dump(
    entry: DatabaseDump,
    files: Path,
    scratch: Path,
    places: _Places,
    cancel: threading.Event | None,
) -> DumpDrill:
    checked = DumpDrill(entry.member, entry.engine, compared=entry.rows is not None)
    path = files / entry.member
    if not MEMBER.fullmatch(entry.member) or not path.is_file() or path.is_symlink():
        checked.problems.append("not in the restored files")
        return checked
    loaded: dict[str, int] | None
    if entry.engine == "sqlite":
        loaded = _sqlite_counts(path, checked)
    elif entry.engine in ENGINES:
        loaded = _loaded_counts(entry, path, scratch, places, checked, cancel)
    else:
        checked.problems.append(f"unknown engine {entry.engine!r}")
        return checked
    if loaded is None:
        return checked
    recorded = entry.rows or {}
    checked.problems += differences(recorded, loaded)
    checked.tables = len(recorded)
    checked.rows = sum(loaded.get(t, 0) for t in recorded)
    return checked


def _sqlite_counts(path: Path, checked: DumpDrill) -> dict[str, int] | None:
    """Rows per table of a SQLite copy from the backup (a file from the network: read
    only, its schema not trusted to call functions)."""
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            conn.execute("PRAGMA trusted_schema = OFF")
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            return {
                t: conn.execute('SELECT count(*) FROM "' + t.replace('"', '""') + '"').fetchone()[0]
                for t in tables
            }
        finally:
            conn.close()
    except sqlite3.Error as exc:
        checked.problems.append(f"the copy could not be read: {exc}")
        return None


class _Places:
    """Where dumps load: the job's own servers (their settings read once per drill), or
    throwaway servers, each started when a dump first needs it."""

    def __init__(self, config: Config, job: str, stack: contextlib.ExitStack) -> None:
        self.local = config.jobs[job].drill_server == "local"
        self.live = live_databases(config, job)
        self.job = job
        self._stack = stack
        self._started: dict[str, servers.Server] = {}
        self._targets = [] if self.local else _job_targets(config, job)

    def targets(self, entry: DatabaseDump, name: str) -> tuple[Target, Target, str | None]:
        """(who creates and drops database `name`, who loads into it, its owner)."""
        if not self.local:
            target = _configured_target(self._targets, entry, name)
            return target, target, None
        if entry.engine not in self._started:
            self._started[entry.engine] = self._stack.enter_context(servers.start(entry.engine))
        server = self._started[entry.engine]
        owner = server.user if entry.engine == "postgresql" else None
        admin, loader = (_local_target(server, user, name) for user in (server.admin, server.user))
        return admin, loader, owner


def _loaded_counts(
    entry: DatabaseDump,
    path: Path,
    scratch: Path,
    places: _Places,
    checked: DumpDrill,
    cancel: threading.Event | None,
) -> dict[str, int] | None:
    """Load the dump into a new scratch database, count its rows, drop it."""
    engine = ENGINES[entry.engine]
    checked.into = scratch_name(places.job)
    work = scratch / "passfiles"
    admin, target = _create(entry, checked.into, places, work)
    log = structlog.get_logger("backupagent.drill")
    try:
        log.info("loading into a scratch database", dump=checked.member, into=checked.into)
        engine.load(target, path, work, cancel)
        log.info("loaded", dump=checked.member, into=checked.into)
        return engine.count(target, work)
    except DumpFailed as exc:
        checked.problems.append(f"the load failed: {said(exc)}")
        return None
    finally:
        with contextlib.suppress(DumpFailed):
            engine.drop(admin, work)


def _may_create(entry: DatabaseDump, places: _Places, scratch: Path) -> None:
    """Before the download: a scratch database for `entry` can be made where it will
    load (made and dropped again; a throwaway server is started here). DrillError if
    not, naming what the drill needs."""
    if entry.engine not in ENGINES:
        return
    try:
        admin, _target = _create(entry, scratch_name(places.job), places, scratch / "passfiles")
    except DrillError as exc:
        raise DrillError(f"{exc}; nothing was downloaded") from None
    with contextlib.suppress(DumpFailed):
        ENGINES[entry.engine].drop(admin, scratch / "passfiles")


def _create(entry: DatabaseDump, name: str, places: _Places, work: Path) -> tuple[Target, Target]:
    """The new scratch database `name` for `entry`: (who drops it, who loads into it)."""
    admin, target, owner = places.targets(entry, name)
    if name in places.live:  # cannot happen; never risk it
        raise DrillError(f"the scratch name {name} is a live database")
    work.mkdir(exist_ok=True)
    try:  # fails if the name exists: never a database made by anyone else
        ENGINES[entry.engine].create(admin, work, owner)
    except DumpFailed as exc:
        failed = f"{entry.member}: the scratch database {name} could not be created"
        if places.local:
            raise DrillError(f"{failed} on the throwaway server ({said(exc)})") from None
        raise DrillError(
            f"{failed} on the job's server ({said(exc)}); the drill needs a "
            "database user that may create and drop databases named "
            f'{name.rsplit("_", 1)[0]}_*, or drill_server = "local"'
        ) from None
    return admin, target


def _local_target(server: servers.Server, user: str, name: str) -> Target:
    if server.engine == "mysql":
        db: MysqlDatabase | PostgresDatabase = MysqlDatabase(
            type="mysql", name=name, socket=server.socket, user=user
        )
    else:
        db = PostgresDatabase(
            type="postgresql", name=name, host=str(server.socket), port=server.port, user=user
        )
    return Target(db, None, (), None)


def _job_targets(config: Config, job: str) -> list[Target]:
    """The job's MySQL and PostgreSQL servers, as its dumps reach them (passwords read)."""
    from backupagent.sources.wordpress import WordPressError, read_site

    spec = config.jobs[job]
    targets = targets_from_job(job, spec)
    if spec.wordpress:
        with contextlib.suppress(WordPressError):
            targets.append(read_site(spec.wordpress, spec).target)
    return targets


def _configured_target(targets: list[Target], entry: DatabaseDump, name: str) -> Target:
    """The settings of the server `entry` was dumped from, naming database `name`."""
    for target in targets:
        db = target.db
        if (
            db.type == entry.engine
            and isinstance(db, MysqlDatabase | PostgresDatabase)
            and db.name in (entry.name, "all")
        ):
            copy = db.model_copy(update={"name": name})
            return dataclasses.replace(target, db=copy, table_prefix=None)
    raise DrillError(
        f"{entry.member}: the job names no {entry.engine} server for database "
        f'{entry.name!r} any more; set drill_server = "local" to drill it on a throwaway '
        "server"
    )
