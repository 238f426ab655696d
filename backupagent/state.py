"""Per-job state on this host: the run lock and the run history (SQLite in state_dir).

The history is written by whichever process runs a job (the daemon or a manual
`run-job`), so the database runs in WAL mode with a busy timeout and every write is
one short transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

from backupagent.outcome import BACKUP_TRIGGERS, OK, Trigger

DB_NAME = "history.sqlite3"
STOPPED_DURING_RUN = "the agent stopped during this run"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    trigger TEXT NOT NULL,             -- manual | schedule | catch-up | verify | drill
    started TEXT NOT NULL,             -- ISO 8601, UTC
    finished TEXT,
    result TEXT NOT NULL,              -- running | success | warning | failed | aborted
    bytes_archived INTEGER,            -- bytes read from sources and dumps
    bytes_uploaded INTEGER,            -- size of the uploaded archive
    archive TEXT,
    error TEXT,
    suggestion TEXT,
    log_path TEXT NOT NULL,
    warnings INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job, started);
"""


class JobLocked(Exception):
    """Another run of the same job holds the lock."""


@contextlib.contextmanager
def job_lock(state_dir: Path, job: str) -> Iterator[None]:
    """Hold `state_dir/locks/JOB.lock` with flock for the duration of a run.

    The kernel drops a flock when its holder dies, so a crash never leaves a stale lock.
    """
    path = state_dir / "locks" / f"{job}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobLocked(f"job '{job}' is already running (lock {path} is held)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@dataclass
class Run:
    """One row of the run history."""

    run_id: str
    job: str
    trigger: str
    started: dt.datetime
    log_path: str
    result: str = "running"
    finished: dt.datetime | None = None
    bytes_archived: int | None = None
    bytes_uploaded: int | None = None
    archive: str | None = None
    error: str | None = None
    suggestion: str | None = None
    warnings: int | None = None
    # JSON: [{"name", "result", "error"}] per destination, for jobs that have several
    destinations: str | None = None
    # SHA-256 of the manifest a backup run published: a drill loads dumps into a
    # configured server only from backups this host made (backup_manifest)
    manifest_sha256: str | None = None

    @property
    def destination_results(self) -> list[dict[str, str | None]]:
        return json.loads(self.destinations) if self.destinations else []

    @property
    def seconds(self) -> float | None:
        return (self.finished - self.started).total_seconds() if self.finished else None


def lock_table(path: Path = Path("/proc/locks")) -> str | None:
    """The kernel's table of file locks (None: unreadable, so nobody can tell).

    Read, not probed with flock: a probe could make a run starting that instant find
    its job locked."""
    try:
        return path.read_text()
    except OSError:
        return None


def lock_held(state_dir: Path, job: str, table: str | None) -> bool:
    """Whether a live process holds the job's lock, as `table` (lock_table) says. A
    holder is matched by the file's device and inode, or by the pid the holder wrote
    into it (overlay filesystems show other numbers there)."""
    path = state_dir / "locks" / f"{job}.lock"
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if table is None:
        return True  # cannot tell: trust the history
    pid = ""
    with contextlib.suppress(OSError):
        pid = path.read_text().strip()
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields_ = line.split()
        if "FLOCK" in fields_ and (key in fields_ or (pid and pid in fields_[4:6])):
            return True
    return False


def settled(run: Run, held: bool) -> Run:
    """`run` as it ended: one still recorded as running while nobody holds its job's
    lock was stopped with the agent (its job's next run records that too)."""
    if run.result != "running" or held:
        return run
    return replace(run, result="failed", error=STOPPED_DURING_RUN)


class History:
    """The run history database; open one per thread or process (connections are cheap)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(state_dir / DB_NAME, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # with WAL this keeps the database consistent through a crash, without an fsync
        # per commit (the history is a record of runs, not the backups themselves)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.executescript(SCHEMA)
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(runs)")}
        for column, kind in (
            ("warnings", "INTEGER"),
            ("destinations", "TEXT"),
            ("manifest_sha256", "TEXT"),
        ):
            if column not in columns:  # a history written by an older version
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                    self.conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self, run: Run) -> None:
        """Insert or update a run (one statement: atomic against other writers)."""
        row = {f.name: _to_sql(getattr(run, f.name)) for f in fields(Run)}
        names = ", ".join(row)
        marks = ", ".join(f":{n}" for n in row)
        self.conn.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})", row)

    def interrupted(self, job: str) -> int:
        """Mark runs still recorded as running as failed; call only while holding the job lock."""
        cursor = self.conn.execute(
            "UPDATE runs SET result = 'failed', error = ?, "
            "finished = COALESCE(finished, started) WHERE job = ? AND result = 'running'",
            (STOPPED_DURING_RUN, job),
        )
        return cursor.rowcount

    def runs(
        self,
        job: str,
        limit: int = 50,
        results: tuple[str, ...] = (),
        triggers: tuple[str, ...] = (),
    ) -> list[Run]:
        """The job's most recent runs (with those results and triggers, if given), newest first."""
        where, params = "job = ?", [job]
        for column, values in (("result", results), ("trigger", triggers)):
            if values:
                where += f" AND {column} IN ({', '.join('?' * len(values))})"
                params += list(values)
        cursor = self.conn.execute(
            f"SELECT * FROM runs WHERE {where} ORDER BY started DESC LIMIT ?", (*params, limit)
        )
        names = [d[0] for d in cursor.description]
        return [_from_row(dict(zip(names, row, strict=True))) for row in cursor]

    def latest_per_job(self, also: Iterable[str] = ()) -> dict[str, dict[str, Run | None]]:
        """For each job in the history and in `also` (the configured ones): its last
        backup run, its last successful one, its last successful verify and drill."""
        jobs = {row[0] for row in self.conn.execute("SELECT DISTINCT job FROM runs")}
        return {
            job: {
                "last": self.last(job, triggers=BACKUP_TRIGGERS),
                "success": self.last(job, tuple(OK), BACKUP_TRIGGERS),
                "verified": self.last(job, tuple(OK), (Trigger.VERIFY,)),
                "drilled": self.last(job, tuple(OK), (Trigger.DRILL,)),
            }
            for job in sorted(jobs.union(also))
        }

    def first_started(self, job: str) -> dt.datetime | None:
        """When the job's oldest recorded backup run (not a verify or drill) started."""
        marks = ", ".join("?" * len(BACKUP_TRIGGERS))
        row = self.conn.execute(
            f"SELECT MIN(started) FROM runs WHERE job = ? AND trigger IN ({marks})",
            (job, *BACKUP_TRIGGERS),
        ).fetchone()
        return dt.datetime.fromisoformat(row[0]) if row and row[0] else None

    def manifest_made(self, job: str, backup_id: str) -> str | None:
        """The SHA-256 of the manifest this host published for `backup_id`, if it did."""
        row = self.conn.execute(
            "SELECT manifest_sha256 FROM runs WHERE job = ? AND run_id = ? AND result IN "
            "('success', 'warning')",
            (job, backup_id.removeprefix(f"{job}-")),
        ).fetchone()
        return row[0] if row else None

    def last(
        self, job: str, results: tuple[str, ...] = (), triggers: tuple[str, ...] = ()
    ) -> Run | None:
        """The job's most recent run (with one of `results` and `triggers`, if given)."""
        found = self.runs(job, limit=1, results=results, triggers=triggers)
        return found[0] if found else None


def _to_sql(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, str):  # a server's bytes that are not UTF-8, as \udcXX escapes
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _from_row(row: dict[str, object]) -> Run:
    for key in ("started", "finished"):
        if row[key] is not None:
            row[key] = dt.datetime.fromisoformat(str(row[key]))
    return Run(**row)  # type: ignore[arg-type]
