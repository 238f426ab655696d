"""Database dumps: MySQL/MariaDB, PostgreSQL and SQLite, spooled compressed before archiving.

Each dump is checked before it may enter an archive: the tool's exit code, its
stderr, and (for MySQL) the completion marker. A failed dump raises DumpFailed
carrying a diagnosis, so the job fails with advice instead of publishing a backup
without its database. Passwords reach the tools only through an inherited pipe
(MySQL) or a 0600 passfile named in the child's environment (PostgreSQL).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog
import zstandard

from backupagent import process
from backupagent.config import Job, MysqlDatabase, PostgresDatabase, SqliteDatabase
from backupagent.diagnosis import Diagnosis, DumpFailure, diagnose_dump
from backupagent.diagnosis.dumps import SQLITE_READ_ONLY
from backupagent.hashing import HashingWriter
from backupagent.sources.rows import MysqlRows
from backupagent.workers import Worker

AnyDatabase = MysqlDatabase | PostgresDatabase | SqliteDatabase
MYSQL_SYSTEM_DATABASES = {"information_schema", "performance_schema", "mysql", "sys"}
MYSQL_DUMP_OPTIONS = (
    "--single-transaction",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
)
# A dump comes back from a server that may have altered it: the client that loads it
# runs no client command (`\\!`, `system`, `source`: --sandbox fails the load on the
# first one) and sends no local file to the server (LOAD DATA LOCAL).
MYSQL_LOAD_OPTIONS = ("--sandbox", "--local-infile=0")
MYSQL_DUMP_TOOLS = ("mariadb-dump", "mysqldump")  # the first found on PATH
PG_DUMP_TOOLS = ("pg_dump",)
MYSQL_MARKER = b"-- Dump completed"
PG_MAGIC = b"PGDMP"
TAIL_BYTES = 256


@dataclass
class Dump:
    """One database dump waiting in the spool to be added to the archive."""

    name: str
    engine: str
    arcname: str  # where it lands in the archive: databases/NAME.sql|.pgdump|.sqlite3
    spool: Path
    compressed: bool  # spooled as zstd frames, copied into the archive as they are
    size: int = 0  # bytes of the dump itself
    sha256: str = ""
    tables: list[str] = field(default_factory=list)
    rows: dict[str, int] | None = None  # per table, in the dump's own snapshot
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class DumpFailed(Exception):
    """A dump failed or came out incomplete; `diagnosis` says why and what to check."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.what)
        self.diagnosis = diagnosis


@dataclass(frozen=True)
class Target:
    """A database to dump with its resolved password and where its settings live."""

    db: AnyDatabase
    password: str | None
    keys: tuple[tuple[str, str], ...]  # role -> the key to name in advice
    table: str | None  # "jobs.NAME", or "" when the keys are in another file
    file: Path | None = None  # that other file (wp-config.php)
    table_prefix: str | None = None  # MySQL: dump only tables starting with this
    level: int = 3  # zstd level of the spooled dump: it goes into the archive as it is
    # who the clients run as: a site's owner when the settings are theirs (wp-config.php)
    run_as: process.Identity | None = None


def targets_from_job(job_name: str, job: Job) -> list[Target]:
    """The `databases = [...]` entries of a job, with passwords read now."""
    targets = []
    for i, db in enumerate(job.databases):
        at = f"databases[{i}]"
        if isinstance(db, SqliteDatabase):
            keys: tuple[tuple[str, str], ...] = (("name", f"{at}.path"),)
            targets.append(Target(db, None, keys, f"jobs.{job_name}"))
            continue
        keys = (
            ("user", f"{at}.user"),
            ("password", f"{at}.{db.password_key}"),
            ("name", f"{at}.name"),
            ("host", f"{at}.host"),
            ("port", f"{at}.port"),
        )
        if isinstance(db, MysqlDatabase):
            keys += (("socket", f"{at}.socket"),)
            prefix = db.table_prefix
        else:
            prefix = None
        targets.append(Target(db, db.read_password(), keys, f"jobs.{job_name}", None, prefix))
    return targets


# Two compression threads when there are two cores: one thread compressed 244 MB/s of
# SQL, no faster than mariadb-dump writes it, and the dump ran the whole length of the
# archive (bench/compare.py). 2 MiB jobs hold the two threads to about 16 MiB (zstd's
# default job for level 3, 8 MiB, took 50 MiB) for 0.2% more compressed bytes.
DUMP_THREADS = 2 if len(os.sched_getaffinity(0)) > 1 else 0
DUMP_JOB = 2 << 20


def member_label(name: str) -> str:
    """A database's name as an archive member's (and a spool file's) name: the name
    itself when it is plain (letters, digits, `_$.-`), else with every other byte as %XX
    (the member ends in .sql, .pgdump or .sqlite3, so no part is `.` or `..`). A name
    comes from a server or a tenant (`name = "all"`, wp-config.php): `../x` or `a/b`
    must never become a path. One name gives one label, and no two names the same."""
    if re.fullmatch(r"[A-Za-z0-9_$.-]+", name):
        return name
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$.-"
    return "".join(
        chr(b) if b in safe else f"%{b:02X}" for b in name.encode("utf-8", "surrogateescape")
    )


def spool_file(spool_dir: Path, name: str, suffix: str) -> Path:
    """A new file of this process's alone in `spool_dir` (0600, created with O_EXCL and
    without following links), named after the database for whoever looks."""
    fd, path = tempfile.mkstemp(suffix=suffix, prefix=f"{member_label(name)[:40]}.", dir=spool_dir)
    os.close(fd)
    return Path(path)


class _SpoolWriter:
    """Compresses a dump into the spool; counts and hashes the raw bytes, keeps both ends."""

    def __init__(self, path: Path, level: int) -> None:
        # the file spool_file made: opened again without following a link or creating
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.handle = os.fdopen(fd, "wb")
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=DUMP_THREADS, job_size=DUMP_JOB if DUMP_THREADS else 0
        )
        compressor = zstandard.ZstdCompressor(compression_params=params)
        self.writer = compressor.stream_writer(self.handle)
        self.raw = HashingWriter(self.writer)  # type: ignore[arg-type]
        self.head = b""
        self.tail = b""

    def write(self, data: bytes) -> None:
        self.raw.write(data)
        if len(self.head) < TAIL_BYTES:
            self.head += data[: TAIL_BYTES - len(self.head)]
        self.tail = (self.tail + data[-TAIL_BYTES:])[-TAIL_BYTES:]

    def close(self) -> None:
        self.writer.close()  # flushes the zstd frame and closes the file


def dump(target: Target, spool_dir: Path, cancel: threading.Event | None = None) -> list[Dump]:
    """Dump one configured database (several for name = "all") into `spool_dir`.

    Setting `cancel` kills a running dump tool; the run then sees it as aborted.
    """
    return DUMPERS[target.db.type](target, spool_dir, cancel or threading.Event())


def _fail(
    target: Target, name: str, tool: str, code: int | None, stderr: str, complete: bool = True
) -> DumpFailed:
    failure = DumpFailure(
        target.db.type,
        name,
        tool,
        code,
        stderr,
        complete,
        target.keys,
        target.table,
        target.file,
        target.db.path if isinstance(target.db, SqliteDatabase) else None,
    )
    return DumpFailed(diagnose_dump(failure))


def _looks_failed(finished: process.Finished) -> bool:
    """Non-zero exit, or an error printed even though the tool exited 0."""
    return finished.returncode != 0 or any(
        "error" in line.lower() and "warning" not in line.lower()
        for line in finished.stderr.splitlines()
    )


def _tool_warnings(finished: process.Finished) -> list[str]:
    return [
        f"{Path(finished.argv[0]).name}: {line}"
        for line in finished.stderr.splitlines()
        if line.strip()
    ]


@contextlib.contextmanager
def _timed(dumps: list[Dump], item: Dump) -> Iterator[None]:
    started = time.monotonic()
    yield
    item.seconds = time.monotonic() - started
    dumps.append(item)
    structlog.get_logger("backupagent.databases").info(
        "database dumped",
        database=item.name,
        engine=item.engine,
        bytes=item.size,
        seconds=round(item.seconds, 3),
        tables=len(item.tables),
    )


def _spool_dump(
    target: Target,
    item: Dump,
    tool: str,
    dumps: list[Dump],
    run: Callable[[Callable[[bytes], None]], process.Finished],
    complete: Callable[[_SpoolWriter], bool],
    rows: MysqlRows | None = None,
) -> None:
    """Run a dump tool into the spool (and `rows`, to count them); accept it only if it
    ended well and looks whole."""
    with _timed(dumps, item):
        spool = _SpoolWriter(item.spool, target.level)

        def sink(data: bytes) -> None:
            spool.write(data)
            if rows is not None:
                rows.write(data)

        try:
            finished = run(sink)
        finally:
            spool.close()
        whole = complete(spool)
        if _looks_failed(finished) or not whole:
            raise _fail(target, item.name, tool, finished.returncode, finished.stderr, whole)
        item.size, item.sha256 = spool.raw.size, spool.raw.hash.hexdigest()
        item.warnings = _tool_warnings(finished)
        if rows is not None:
            item.rows = rows.counts


def _require_some(target: Target, names: list[str], tool: str) -> None:
    """`name = "all"` that finds nothing is a failure, not an empty backup."""
    if not names:
        raise _fail(
            target,
            "all",
            tool,
            1,
            "error: the server lists no database to dump (none besides system ones, "
            "or the user may not see them)",
        )


# --- MySQL / MariaDB ------------------------------------------------------------------


def _option_value(value: str) -> str:
    """A value for a MySQL option file, double-quoted with \\ and " escaped. A line
    break would start an option of its own (`plugin-dir=...`): no control character
    gets this far (ValueError)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("a control character in an option file value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mysql_options(target: Target) -> str:
    """The [client] option file handed to the tools through a pipe: the password alone
    (everything else is an argument of its own, `_mysql_connection`)."""
    lines = ["[client]"]
    if target.password is not None:
        try:
            lines.append(f"password={_option_value(target.password)}")
        except ValueError:
            raise _fail(
                target,
                _server_name(target),
                "the password",
                1,
                "error: the password holds a control character (a line break, a tab...), "
                "which would change the options the client reads; refused",
            ) from None
    return "\n".join(lines) + "\n"


def _mysql_connection(db: MysqlDatabase) -> list[str]:
    """Who and where to connect, each an argument of its own: a value (from wp-config.php,
    say) is never read as another option."""
    args = [f"--user={db.user}"] if db.user else []
    host = db.host
    if db.port is not None:
        # a port means TCP; "localhost" would make the client use the socket instead
        host = "127.0.0.1" if host in (None, "localhost") else host
        args += [f"--port={db.port}", "--protocol=TCP"]
    if host:
        args.append(f"--host={host}")
    if db.socket:
        args.append(f"--socket={db.socket}")
    return args


def _mysql_run(
    target: Target,
    tool: str,
    args: list[str],
    sink: Callable[[bytes], None],
    cancel: threading.Event | None = None,
    stdin: BinaryIO | None = None,
) -> process.Finished:
    assert isinstance(target.db, MysqlDatabase)
    try:
        fd = process.secret_fd(_mysql_options(target), target.run_as)
    except PermissionError:
        raise _cannot_switch(target, tool) from None
    try:
        # --defaults-extra-file must come first; /dev/fd/N is the inherited pipe
        return process.stream(
            [tool, f"--defaults-extra-file=/dev/fd/{fd}", *_mysql_connection(target.db), *args],
            sink,
            pass_fds=(fd,),
            cancel=cancel,
            stdin=stdin,
            run_as=target.run_as,
        )
    except PermissionError:
        if target.run_as is None:
            raise
        raise _cannot_switch(target, tool) from None
    finally:
        os.close(fd)


def _cannot_switch(target: Target, tool: str) -> DumpFailed:
    """The clients of a site run as its owner, and this process may not become them."""
    assert target.run_as is not None
    return _fail(
        target,
        _server_name(target),
        tool,
        1,
        f"error: the database clients of this site run as the owner of its settings "
        f"(uid {target.run_as.uid}), not as root, and this process may not switch users: "
        "under systemd the unit's CapabilityBoundingSet needs CAP_SETUID CAP_SETGID "
        "CAP_CHOWN CAP_KILL (the shipped units have them: install them again with "
        'scripts/install, README "Security")',
    )


def _mysql_query(target: Target, client: str, name: str, sql: str) -> list[str]:
    out = bytearray()
    finished = _mysql_run(target, client, ["-N", "-B", "-e", sql], out.extend)
    if _looks_failed(finished):
        raise _fail(target, name, client, finished.returncode, finished.stderr)
    return [line for line in out.decode("utf-8", "replace").splitlines() if line]


def login(target: Target, spool_dir: Path) -> None:
    """Log in as the dump would (the same client, user, password and server, as the
    same user) and run `SELECT 1` in the database: `run-job --dry-run`'s check that a
    wrong password or a missing database shows before a night's run. DumpFailed, with
    the dump's diagnosis, when it cannot; SQLite has nothing to log in to."""
    db = target.db
    if isinstance(db, MysqlDatabase):
        client = _mysql_client(target)
        # the name from wp-config.php is a value of its own argument, never an option
        chosen = [] if db.name == "all" else [f"--database={db.name}"]
        finished = _mysql_run(target, client, ["-N", "-B", *chosen, "-e", "SELECT 1"], _drop)
        if _looks_failed(finished):
            raise _fail(target, db.name, client, finished.returncode, finished.stderr)
    elif isinstance(db, PostgresDatabase):
        _pg_admin(target, spool_dir, "postgres" if db.name == "all" else db.name, "SELECT 1")


def _drop(_data: bytes) -> None:
    """Output nobody needs."""


def _unhex(text: str) -> str:
    return bytes.fromhex(text.strip()).decode("utf-8", "surrogateescape")


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dump_mysql(target: Target, spool_dir: Path, cancel: threading.Event) -> list[Dump]:
    db = target.db
    assert isinstance(db, MysqlDatabase)
    try:
        tool = process.find_tool(*MYSQL_DUMP_TOOLS)
        client = process.find_tool("mariadb", "mysql")
    except process.ToolMissing as exc:
        raise _fail(target, db.name, " or ".join(exc.names), None, str(exc)) from None
    if db.name == "all":  # read as hex: a name may hold a line break
        hexed = _mysql_query(
            target, client, "all", "SELECT HEX(schema_name) FROM information_schema.schemata"
        )
        names = [_unhex(h) for h in hexed]
        names = sorted(n for n in names if n not in MYSQL_SYSTEM_DATABASES)
        _require_some(target, names, client)
    else:
        names = [db.name]
    dumps: list[Dump] = []
    for name in names:
        hexed = _mysql_query(
            target,
            client,
            name,
            "SELECT HEX(table_name) FROM information_schema.tables WHERE table_schema = "
            f"{_sql_string(name)} ORDER BY table_name",
        )
        tables = [_unhex(h) for h in hexed]
        selected = tables  # empty for an unknown database too: the dump tool will say which
        if target.table_prefix is not None:
            selected = [t for t in tables if t.startswith(target.table_prefix)]
            if not selected:
                raise _fail(
                    target,
                    name,
                    tool,
                    1,
                    f"error: no table in {name!r} starts with {target.table_prefix!r}",
                )
        item = Dump(
            name,
            "mysql",
            f"databases/{member_label(name)}.sql",
            spool_file(spool_dir, name, ".sql.zst"),
            True,
            tables=selected,
        )
        args = [*MYSQL_DUMP_OPTIONS, "--", name]
        if target.table_prefix is not None:
            args += selected
        _spool_dump(
            target,
            item,
            tool,
            dumps,
            functools.partial(_mysql_run, target, tool, args, cancel=cancel),
            lambda spool: MYSQL_MARKER in spool.tail,
            MysqlRows(),
        )
    return dumps


def load_mysql(
    target: Target,
    source: BinaryIO,
    create: bool = True,
    cancel: threading.Event | None = None,
    events: bool = True,
) -> None:
    """Feed a dump to the mysql client into database `target.db.name` (restore, drill).
    With `events` False the dump's scheduled events are created disabled: a drill's
    copy of an event must never run (its body may name a live database)."""
    db = target.db
    assert isinstance(db, MysqlDatabase)
    client = _mysql_client(target)
    if create:
        quoted = "`" + db.name.replace("`", "``") + "`"
        _mysql_query(target, client, db.name, f"CREATE DATABASE IF NOT EXISTS {quoted}")
    out = bytearray()
    with contextlib.ExitStack() as stack:
        pump = None
        if not events:
            source, pump = stack.enter_context(_events_disabled(source))
        finished = _mysql_run(
            target, client, [*MYSQL_LOAD_OPTIONS, "--", db.name], out.extend, cancel, source
        )
    if pump is not None and pump.error is not None and not isinstance(pump.error, BrokenPipeError):
        raise _fail(target, db.name, "reading the dump", 1, f"error: {pump.error}")
    if _looks_failed(finished):
        raise _fail(target, db.name, client, finished.returncode, finished.stderr)


# mariadb-dump's line that creates an enabled event: `/*!50106 CREATE*/ ... EVENT `e`
# ON SCHEDULE ... ON COMPLETION [NOT] PRESERVE ENABLE DO ...` (the first such clause)
_ENABLED_EVENT = re.compile(
    rb"^(/\*!50106 CREATE\*/.*? EVENT .*? ON COMPLETION (?:NOT )?PRESERVE )ENABLE( DO )"
)
LINE_PIECE = 1 << 20  # a longer line passes through in pieces


def disable_event(line: bytes) -> bytes:
    """A dump line that creates an enabled event, made to create it disabled."""
    if not line.startswith(b"/*!50106 CREATE*/"):
        return line
    return _ENABLED_EVENT.sub(rb"\1DISABLE\2", line, count=1)


@contextlib.contextmanager
def _events_disabled(source: BinaryIO) -> Iterator[tuple[BinaryIO, Worker[None]]]:
    """`source` through a pipe, a line at a time, with every event created disabled."""
    read_fd, write_fd = os.pipe()

    def pump() -> None:
        with os.fdopen(write_fd, "wb") as out:
            at_line_start = True
            while piece := source.readline(LINE_PIECE):
                out.write(disable_event(piece) if at_line_start else piece)
                at_line_start = piece.endswith(b"\n")

    reader = os.fdopen(read_fd, "rb")
    worker = Worker("dump filter", pump).start()
    try:
        yield reader, worker
    finally:
        reader.close()  # a pump blocked on a full pipe then ends with BrokenPipeError
        worker.wait()


def _server_name(target: Target) -> str:
    """The database a MySQL or PostgreSQL target names."""
    assert isinstance(target.db, MysqlDatabase | PostgresDatabase)
    return target.db.name


def _mysql_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _mysql_client(target: Target) -> str:
    try:
        return process.find_tool("mariadb", "mysql")
    except process.ToolMissing as exc:
        raise _fail(target, _server_name(target), " or ".join(exc.names), None, str(exc)) from None


def create_mysql(target: Target, spool_dir: Path, owner: str | None = None) -> None:
    """Create database `target.db.name`; fails if it exists (a drill's scratch database).
    `owner` is PostgreSQL's: MySQL databases have none."""
    statement = f"CREATE DATABASE {_mysql_identifier(_server_name(target))}"
    _mysql_query(target, _mysql_client(target), _server_name(target), statement)


def drop_mysql(target: Target, spool_dir: Path) -> None:
    statement = f"DROP DATABASE IF EXISTS {_mysql_identifier(_server_name(target))}"
    _mysql_query(target, _mysql_client(target), _server_name(target), statement)


COUNT_BATCH = 200  # tables counted per statement


def count_mysql(target: Target, spool_dir: Path) -> dict[str, int]:
    """count(*) of every base table of database `target.db.name` (names read as hex:
    whatever they hold, they come back whole)."""
    client, name = _mysql_client(target), _server_name(target)
    hexed = _mysql_query(
        target,
        client,
        name,
        "SELECT HEX(table_name) FROM information_schema.tables WHERE table_schema = "
        f"{_sql_string(name)} AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    tables = [_unhex(h) for h in hexed]
    counts: dict[str, int] = {}
    for at in range(0, len(tables), COUNT_BATCH):
        batch = tables[at : at + COUNT_BATCH]
        selects = ", ".join(
            f"(SELECT COUNT(*) FROM {_mysql_identifier(name)}.{_mysql_identifier(t)})"
            for t in batch
        )
        row = _mysql_query(target, client, name, f"SELECT {selects}")
        counts.update(zip(batch, (int(n) for n in row[0].split("\t")), strict=True))
    return counts


# --- PostgreSQL ------------------------------------------------------------------------


def _pg_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pg_passfile(db: PostgresDatabase, password: str) -> str:
    """The passfile's lines: the password for the configured host, port and user only,
    never `*` for the host (a connection elsewhere must not be handed it). libpq
    matches a socket in its default directory as `localhost`."""
    hosts = [db.host or "localhost"]
    if db.host and db.host.startswith("/"):
        hosts.append("localhost")
    port = str(db.port) if db.port else "*"
    user = _pg_field(db.user) if db.user else "*"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise ValueError("a control character in the password")
    return "".join(f"{_pg_field(host)}:{port}:*:{user}:{_pg_field(password)}\n" for host in hosts)


@contextlib.contextmanager
def _pg_env(target: Target, spool_dir: Path) -> Iterator[dict[str, str]]:
    """The environment for pg_dump/psql: a 0600 passfile (new, in the private
    `spool_dir`) that is removed afterwards."""
    assert isinstance(target.db, PostgresDatabase)
    env = {k: v for k, v in os.environ.items() if k not in PG_ENVIRONMENT}
    env["PGCONNECT_TIMEOUT"] = os.environ.get("PGCONNECT_TIMEOUT", "15")
    passfile: Path | None = None
    if target.password is not None:
        try:
            lines = pg_passfile(target.db, target.password)
        except ValueError:
            raise _fail(
                target,
                target.db.name,
                "the password",
                1,
                "error: the password holds a control character (a line break, a tab...); refused",
            ) from None
        passfile = spool_file(spool_dir, "pgpass", "")
        passfile.write_text(lines)
        env["PGPASSFILE"] = str(passfile)
    try:
        yield env
    finally:
        if passfile is not None:
            passfile.unlink(missing_ok=True)


# libpq's variables that would send a connection (and the password) elsewhere than the
# job says, or hand it another password
PG_ENVIRONMENT = {"PGPASSWORD", "PGSERVICE", "PGSERVICEFILE", "PGDATABASE", "PGOPTIONS"}


def pg_dbname(name: str) -> str:
    """`--dbname=` for a database called `name`: libpq reads a dbname holding `=` as a
    connection string (`host=elsewhere port=...`), so it is given as one, quoted."""
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pg_args(db: PostgresDatabase) -> list[str]:
    args = ["--no-password"]
    if db.host:
        args.append(f"--host={db.host}")
    if db.port:
        args.append(f"--port={db.port}")
    if db.user:
        args.append(f"--username={db.user}")
    return args


def _pg_query(target: Target, env: dict[str, str], psql: str, database: str, sql: str) -> list[str]:
    assert isinstance(target.db, PostgresDatabase)
    finished, out = process.capture(
        [
            psql,
            *_pg_args(target.db),
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            f"--dbname={pg_dbname(database)}",
        ],
        env=env,
    )
    if _looks_failed(finished):
        raise _fail(target, database, psql, finished.returncode, finished.stderr)
    return [line for line in out.splitlines() if line]


def load_postgres(
    target: Target,
    dump: Path,
    spool_dir: Path,
    create: bool = True,
    cancel: threading.Event | None = None,
) -> None:
    """pg_restore a custom-format dump into database `target.db.name` (created if
    missing), without its owners and grants: the roles of the dumped server need not
    exist here (restore, drill)."""
    db = target.db
    assert isinstance(db, PostgresDatabase)
    try:
        tool, psql = process.find_tool("pg_restore"), process.find_tool("psql")
    except process.ToolMissing as exc:
        raise _fail(target, db.name, " or ".join(exc.names), None, str(exc)) from None
    with _pg_env(target, spool_dir) as env:
        if create:
            literal = "'" + db.name.replace("'", "''") + "'"
            found = _pg_query(
                target,
                env,
                psql,
                "postgres",
                f"SELECT 1 FROM pg_database WHERE datname = {literal}",
            )
            if not found:
                identifier = '"' + db.name.replace('"', '""') + '"'
                _pg_query(target, env, psql, "postgres", f"CREATE DATABASE {identifier}")
        argv = [
            tool,
            *_pg_args(db),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--dbname={pg_dbname(db.name)}",
            str(dump),
        ]
        finished = process.stream(argv, lambda _: None, env=env, cancel=cancel)
    if _looks_failed(finished):
        raise _fail(target, db.name, tool, finished.returncode, finished.stderr)


def _pg_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pg_admin(target: Target, spool_dir: Path, database: str, sql: str) -> list[str]:
    try:
        psql = process.find_tool("psql")
    except process.ToolMissing as exc:
        raise _fail(target, _server_name(target), " or ".join(exc.names), None, str(exc)) from None
    with _pg_env(target, spool_dir) as env:
        return _pg_query(target, env, psql, database, sql)


def create_postgres(target: Target, spool_dir: Path, owner: str | None = None) -> None:
    """Create database `target.db.name` (owned by `owner`, if given); fails if it exists
    (a drill's scratch database)."""
    statement = f"CREATE DATABASE {_pg_identifier(_server_name(target))}"
    if owner is not None:
        statement += f" OWNER {_pg_identifier(owner)}"
    _pg_admin(target, spool_dir, "postgres", statement)


def drop_postgres(target: Target, spool_dir: Path) -> None:
    statement = f"DROP DATABASE IF EXISTS {_pg_identifier(_server_name(target))}"
    _pg_admin(target, spool_dir, "postgres", statement)


def count_postgres(target: Target, spool_dir: Path) -> dict[str, int]:
    """count(*) of every table of database `target.db.name`, keyed schema.table."""
    answer = _pg_admin(target, spool_dir, _server_name(target), PG_COUNT_ROWS)
    counts = json.loads(answer[0]) if answer else {}
    return {str(k): int(v) for k, v in counts.items()}


def dump_postgres(target: Target, spool_dir: Path, cancel: threading.Event) -> list[Dump]:
    db = target.db
    assert isinstance(db, PostgresDatabase)
    try:
        tool = process.find_tool(*PG_DUMP_TOOLS)
        psql = process.find_tool("psql")
    except process.ToolMissing as exc:
        raise _fail(target, db.name, " or ".join(exc.names), None, str(exc)) from None
    dumps: list[Dump] = []
    with _pg_env(target, spool_dir) as env:
        if db.name == "all":  # as hex: a name may hold a line break
            hexed = _pg_query(
                target,
                env,
                psql,
                "postgres",
                "SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database "
                "WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY datname",
            )
            names = [_unhex(h) for h in hexed]
            _require_some(target, names, psql)
        else:
            names = [db.name]
        for name in names:
            hexed = _pg_query(
                target,
                env,
                psql,
                name,
                "SELECT encode(convert_to(schemaname || '.' || tablename, 'UTF8'), 'hex') "
                "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
                "ORDER BY 1",
            )
            item = Dump(
                name,
                "postgresql",
                f"databases/{member_label(name)}.pgdump",
                spool_file(spool_dir, name, ".pgdump.zst"),
                True,
                tables=[_unhex(h) for h in hexed],
            )
            dbname = f"--dbname={pg_dbname(name)}"
            argv = [tool, *_pg_args(db), "--format=custom", dbname]
            with process.Session(
                [psql, *_pg_args(db), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", dbname],
                env=env,
            ) as held:
                snapshot = held.ask(PG_SNAPSHOT, timeout=PG_ANSWER_SECONDS, cancel=cancel)
                shared = snapshot is not None and re.fullmatch(r"[0-9A-Fa-f-]{1,64}", snapshot)
                if shared:
                    argv.append(f"--snapshot={snapshot}")
                _spool_dump(
                    target,
                    item,
                    tool,
                    dumps,
                    functools.partial(process.stream, argv, env=env, cancel=cancel),
                    lambda spool: spool.head.startswith(PG_MAGIC),
                )
                item.rows = _pg_counts(held, cancel) if shared else None
                if item.rows is None:  # the dump is whole; only the drill will know less
                    item.warnings.append(
                        f"psql: the rows of {name} could not be counted in the dump's "
                        "snapshot; a drill will load this dump without comparing them "
                        f"({held.stderr.strip()[-300:]})"
                    )
    return dumps


# A transaction whose snapshot pg_dump --snapshot reads: rows counted in it are the
# dump's. Every table's count(*) in one statement, as JSON (names may hold anything).
PG_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();\n"
PG_COUNT_ROWS = (
    "SELECT coalesce(json_object_agg(schemaname || '.' || tablename, (xpath('/row/n/text()', "
    "query_to_xml(format('SELECT count(*) AS n FROM %I.%I', schemaname, tablename), "
    "false, true, '')))[1]::text::bigint), '{}') FROM pg_tables "
    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
)
PG_ANSWER_SECONDS = 60  # for the snapshot; counting takes as long as it takes


def _pg_counts(held: process.Session, cancel: threading.Event) -> dict[str, int] | None:
    answer = held.ask(PG_COUNT_ROWS + ";\n", cancel=cancel)
    try:
        counts = json.loads(answer or "")
    except ValueError:
        return None
    if not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values()):
        return None
    return counts


# --- SQLite ----------------------------------------------------------------------------


def dump_sqlite(target: Target, spool_dir: Path, cancel: threading.Event) -> list[Dump]:
    """A consistent copy of a live SQLite database through the online backup API."""
    db = target.db
    assert isinstance(db, SqliteDatabase)
    name = db.dump_name
    item = Dump(
        name,
        "sqlite",
        f"databases/{member_label(name)}.sqlite3",
        spool_file(spool_dir, name, ".sqlite3"),
        False,
    )
    dumps: list[Dump] = []
    with _timed(dumps, item):
        try:
            if not db.path.is_file():
                raise sqlite3.OperationalError(f"error: no database file at {db.path}")
            copy = sqlite3.connect(item.spool)
            try:
                _copy_sqlite(db.path, copy)
                item.tables = [
                    row[0]
                    for row in copy.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                    )
                ]
                item.rows = {
                    table: copy.execute(
                        'SELECT count(*) FROM "' + table.replace('"', '""') + '"'
                    ).fetchone()[0]
                    for table in item.tables
                }
                check = copy.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"error: the copy failed its check: {check}")
            finally:
                copy.close()
        except sqlite3.Error as exc:
            raise _fail(target, name, "sqlite3 backup API", 1, f"error: {exc}") from None
        with item.spool.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256")
        item.size, item.sha256 = item.spool.stat().st_size, digest.hexdigest()
    return dumps


SQLITE_TRIES = 3  # reads as immutable spoiled by a writer before the copy is given up


def _copy_sqlite(path: Path, copy: sqlite3.Connection) -> None:
    """Copy `path` into `copy` in one step of the online backup API: a snapshot no
    writer can tear.

    A WAL database that no process has open cannot be opened, even read-only, where its
    directory is read-only to the agent (the unit's ProtectSystem=strict): SQLite must
    create the -shm file. Then, while no write-ahead log holds changes, the file alone
    is the database: it is read as immutable, and the copy kept only if the file did not
    change meanwhile (a writer that starts appends to a new log; only its checkpoint
    writes the file)."""
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    wal = path.with_name(f"{path.name}-wal")
    for _ in range(SQLITE_TRIES):
        try:
            _backup(uri, copy)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_CANTOPEN or not _wal_unshared(path):
                raise
        if _size(wal):
            raise sqlite3.OperationalError(
                f"{path} is a WAL database no process has open, its directory "
                f"{path.parent} is {SQLITE_READ_ONLY}, and its write-ahead log {wal.name} "
                f"holds changes not yet in the file ({_size(wal)} bytes)"
            )
        before = _identity(path)
        _backup(f"{uri}&immutable=1", copy)
        if _identity(path) == before and not _size(wal):
            structlog.get_logger("backupagent.dump").info(
                "read a WAL database whose directory is read-only as immutable; "
                "it did not change while read",
                path=str(path),
            )
            return
    raise sqlite3.OperationalError(
        f"{path} is a WAL database whose directory {path.parent} is {SQLITE_READ_ONLY}, "
        f"and it was written to during each of {SQLITE_TRIES} copies"
    )


def _backup(uri: str, copy: sqlite3.Connection) -> None:
    source = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        source.backup(copy)
    finally:
        source.close()


def _wal_unshared(path: Path) -> bool:
    """A WAL database (header bytes 18 and 19 are 2) in a directory this process may
    not write: SQLite cannot make its -shm file."""
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return header[18:20] == b"\x02\x02" and not os.access(path.parent, os.W_OK)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when anything writes the file."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


DUMPERS: dict[str, Callable[[Target, Path, threading.Event], list[Dump]]] = {
    "mysql": dump_mysql,
    "postgresql": dump_postgres,
    "sqlite": dump_sqlite,
}
