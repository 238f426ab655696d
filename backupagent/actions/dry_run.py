"""`run-job --dry-run`: what a run of the job would do, found without doing it.

The sources are walked as a run walks them (the same roots, excludes and skipped
directories), counting what would be archived and what each exclude pattern removed;
the database dumps are listed with the tool that would make them, and each server is
logged into as the dump would (`SELECT 1`); each destination is logged into and its
directory listed without creating it. Nothing is left anywhere: not on the server,
the history or the run logs; a PostgreSQL password passes through a 0600 passfile in
a private directory of the spool, removed at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backupagent import process, trust
from backupagent.config import Config, MysqlDatabase, PostgresDatabase, SqliteDatabase
from backupagent.destinations import open_destination
from backupagent.destinations.base import DestinationError
from backupagent.diagnosis import suggestion_text
from backupagent.preflight import host_problems
from backupagent.retention import complete_backups
from backupagent.sources.databases import (
    MYSQL_DUMP_TOOLS,
    PG_DUMP_TOOLS,
    DumpFailed,
    Target,
    login,
    targets_from_job,
)
from backupagent.sources.files import job_roots, own_directories, walk
from backupagent.sources.wordpress import WordPressError, read_site


@dataclass
class Excluded:
    """What one exclude pattern removed below one source (directories counted whole)."""

    pattern: str
    files: int = 0
    directories: int = 0
    bytes: int = 0


@dataclass
class SourcePlan:
    """What a run would archive from one source."""

    path: str
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    other: int = 0  # FIFOs, sockets and devices: recorded, not read
    bytes: int = 0
    excluded: list[Excluded] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what a run would skip, and why


@dataclass
class DumpPlan:
    """A database a run would dump, and with what; `problem` when it could not."""

    engine: str
    name: str
    server: str  # host and port, socket, or the SQLite file
    tool: str | None = None
    problem: str | None = None
    advice: str | None = None  # what to change, when the login said why it failed


@dataclass
class DestinationPlan:
    """What the destination showed: logged in, its directory, this job's backups."""

    name: str
    type: str
    where: str
    directory_exists: bool | None = None  # None: not reached
    backups: int = 0  # complete backups of this job there now
    newest: str | None = None
    error: str | None = None
    suggestion: str | None = None


@dataclass
class DryRun:
    """Everything `run-job --dry-run` found."""

    job: str
    sources: list[SourcePlan]
    dumps: list[DumpPlan]
    destinations: list[DestinationPlan]
    problems: list[str]  # what `check` finds on this host for this job
    require: str  # "all" | "any": how many destinations must work
    encrypted: bool
    incremental: bool
    hooks: dict[str, str]  # before/after/on_failure -> its command (a dry run runs none)

    @property
    def ok(self) -> bool:
        """Nothing found that would fail the run."""
        working = [d for d in self.destinations if d.error is None]
        enough = working == self.destinations if self.require == "all" else bool(working)
        return enough and not self.problems and not any(d.problem for d in self.dumps)


def dry_run(config: Config, job_name: str, cancel: threading.Event | None = None) -> DryRun:
    """Look at the job's sources, databases and destinations; change nothing."""
    job = config.jobs[job_name]
    problems = [str(p) for p in host_problems(config) if p.table in ("agent", f"jobs.{job_name}")]
    skip = own_directories(config.agent)
    sources = [
        survey_source(root, patterns, skip)
        for root, patterns in job_roots(job).items()
        if root.is_dir()
    ]
    dumps = plan_dumps(config, job_name)
    destinations = [
        _survey_destination(config, job_name, name, cancel or threading.Event())
        for name in job.destination_names
    ]
    return DryRun(
        job_name,
        sources,
        dumps,
        destinations,
        problems,
        job.require,
        bool(config.recipients_for(job_name)),
        job.incremental,
        {name: hook.run for name in HOOKS if (hook := getattr(job, name)) is not None},
    )


HOOKS = ("before", "after", "on_failure")


def survey_source(root: Path, patterns: list[str], skip: frozenset[tuple[int, int]]) -> SourcePlan:
    """Walk `root` as a run would; count what it would archive and what each pattern left
    out (the last matching pattern that is not a negation, as gitignore decides)."""
    plan = SourcePlan(str(root))
    by_pattern = {p: Excluded(p) for p in patterns}
    matchers = _single_matchers(patterns)

    def excluded(path: str, relative: str, is_dir: bool) -> None:
        pattern = next((p for p, match in reversed(matchers) if match(relative)), patterns[-1])
        counted = by_pattern[pattern]
        if is_dir:
            files, directories, size = _tree_size(path)
            counted.files += files
            counted.directories += directories
            counted.bytes += size
        else:
            counted.files += 1
            counted.bytes += _size(path)

    def warn(path: str, reason: str) -> None:
        plan.warnings.append(f"{path}: {reason}")

    for entry in walk(root, patterns, warn, skip, excluded):
        try:
            st = entry.lstat()
        except OSError as exc:
            warn(entry.path, f"cannot stat, skipped: {exc.strerror or exc}")
            continue
        if stat.S_ISREG(st.st_mode):
            plan.files += 1
            plan.bytes += st.st_size
            if not os.access(entry.path, os.R_OK):  # the run would skip it with a warning
                warn(entry.path, "not readable by this user, would be skipped")
        elif stat.S_ISDIR(st.st_mode):
            plan.directories += 1
        elif stat.S_ISLNK(st.st_mode):
            plan.symlinks += 1
        else:
            plan.other += 1
    plan.excluded = [e for e in by_pattern.values() if e.files or e.directories]
    return plan


def _single_matchers(patterns: list[str]) -> list[tuple[str, Callable[[str], bool]]]:
    import pathspec

    return [
        (p, pathspec.GitIgnoreSpec.from_lines([p]).match_file)
        for p in patterns
        if p.strip() and not p.startswith(("!", "#"))
    ]


def _tree_size(path: str) -> tuple[int, int, int]:
    """Files, directories (itself included) and bytes of regular files below `path`,
    links not followed."""
    files, directories, size = 0, 0, 0
    for _top, _directories, filenames, top_fd in os.fwalk(path, follow_symlinks=False):
        directories += 1
        for name in filenames:
            files += 1
            try:
                st = os.stat(name, dir_fd=top_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return files, directories, size


def _size(path: str) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def plan_dumps(config: Config, job_name: str) -> list[DumpPlan]:
    """Each database a run would dump, the tool it would use, and what would stop it
    (each server logged into, as the dump would)."""
    job = config.jobs[job_name]
    plans: list[DumpPlan] = []
    try:
        targets = targets_from_job(job_name, job)
    except (OSError, ValueError) as exc:  # a password file that cannot be read
        return [DumpPlan("?", "?", "?", problem=str(exc))]
    if job.wordpress is not None:
        try:
            targets.append(read_site(job.wordpress, job).target)
        except WordPressError as exc:
            where = exc.config_file or job.wordpress
            plans.append(DumpPlan("mysql", "?", str(where), problem="; ".join(exc.problems)))
    planned = [_plan_dump(target) for target in targets]
    servers = [
        (plan, target)
        for plan, target in zip(planned, targets, strict=True)
        if plan.problem is None and not isinstance(target.db, SqliteDatabase)
    ]
    if servers:
        try:
            with _scratch(config, job_name) as spool:
                for plan, target in servers:
                    try:
                        login(target, spool)
                    except DumpFailed as exc:
                        found = exc.diagnosis
                        said = [line for line in found.evidence if line][-1:]  # the server's
                        plan.problem = "; ".join([f"cannot log in: {found.what}", *said])
                        keys = ", ".join(found.keys)
                        plan.advice = f"{found.advice} ({keys})" if keys else found.advice
        except (trust.Untrusted, OSError) as exc:  # `check` names the spool's problem
            for plan, _target in servers:
                plan.problem = f"the login was not tried: the spool cannot be used ({exc})"
    return plans + planned


@contextlib.contextmanager
def _scratch(config: Config, job_name: str) -> Iterator[Path]:
    """A private directory of the spool for the logins' passfiles, removed after."""
    spool = trust.private_directory(config.agent.spool_dir / job_name)
    scratch = Path(tempfile.mkdtemp(prefix="dry-run-", dir=spool))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _plan_dump(target: Target) -> DumpPlan:
    db = target.db
    if isinstance(db, SqliteDatabase):
        problem = None
        if not db.path.is_file():
            problem = f"no database file at {db.path}"
        elif not os.access(db.path, os.R_OK):
            problem = f"{db.path} cannot be read by this user (uid {os.geteuid()})"
        return DumpPlan("sqlite", db.dump_name, str(db.path), "sqlite3 backup API", problem)
    server = _server(db)
    tools = MYSQL_DUMP_TOOLS if isinstance(db, MysqlDatabase) else PG_DUMP_TOOLS
    try:
        return DumpPlan(db.type, db.name, server, process.find_tool(*tools))
    except process.ToolMissing as exc:
        return DumpPlan(db.type, db.name, server, problem=str(exc))


def _server(db: MysqlDatabase | PostgresDatabase) -> str:
    socket = getattr(db, "socket", None)
    if socket is not None:
        return str(socket)
    if db.host is None:
        return "the local server (its default socket)"
    return f"{db.host}:{db.port}" if db.port else db.host


def _survey_destination(
    config: Config, job: str, name: str, cancel: threading.Event
) -> DestinationPlan:
    settings = config.destinations[name]
    where = str(getattr(settings, "path", "") or f"{getattr(settings, 'host', '')}")
    plan = DestinationPlan(name, settings.type, where)
    try:
        destination = open_destination(config, job, cancel=cancel, name=name)
    except DestinationError as exc:
        plan.error = str(exc)
        return plan
    try:
        plan.where = " ".join(f"{k}={v}" for k, v in destination.describe().items())
        names = destination.survey()
        plan.directory_exists = names is not None
        found = complete_backups(job, names or [])
        plan.backups = len(found)
        plan.newest = found[-1].backup_id if found else None
    except DestinationError as exc:
        plan.error = str(exc) or type(exc).__name__
        explained = exc.explain()
        if explained is not None:
            diagnosis, probe = explained
            plan.suggestion = suggestion_text(
                diagnosis,
                job,
                name,
                config.path,
                probe,
                config.mode_table(job, name),
                config.files,
            )
    finally:
        destination.close()
    return plan
