"""`backupagent restore`: choose a backup, stream it in (each volume checked against
its manifest before it is used), extract it safely into an empty directory, and load
a MySQL dump on request.

retrieve.py judges every member as it arrives and removes what it wrote when the
restore fails; the spool holds two volumes at most, and none outlives the restore.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupagent.config import Config, MysqlDatabase, PostgresDatabase
from backupagent.destinations import open_destination
from backupagent.retrieve import (
    BackupInfo,
    Fetching,
    RestoreError,
    chain,
    choose,
    extract_chain,
    listed,
    load_database,
    private_directory,
    wanted_by,
)
from backupagent.sources.databases import Target, load_postgres
from backupagent.unpack import Report


class UsageError(Exception):
    """The request itself is wrong (exit 2): nothing was downloaded."""


@dataclass(frozen=True)
class Load:
    """Load the backup's dump `dump` (MySQL `.sql` or PostgreSQL `.pgdump`) into the
    database `into` on the server these settings reach."""

    dump: str
    into: str
    host: str | None = None
    port: int | None = None
    socket: Path | None = None  # PostgreSQL: its socket directory, as host
    user: str | None = None
    password: str | None = None
    overwrite_live: bool = False


@dataclass(frozen=True)
class Restored:
    backup: BackupInfo
    report: Report


def restore(
    config: Config,
    job: str,
    target: Path,
    wanted: str = "latest",
    identities: list[Any] | None = None,
    outside_links: bool = False,
    load: Load | None = None,
    destination: str | None = None,
    include: list[str] | None = None,
) -> Restored:
    """Restore a backup of `job` into the empty directory `target` (with `include`,
    only what those patterns want: retrieve.wanted_by); `load` is only checked here (a
    live database needs overwrite_live) and done by `load_dump`.
    Raises UsageError, RestoreError, DestinationError."""
    if load and load.into in live_databases(config, job) and not load.overwrite_live:
        raise UsageError(
            f"--into {load.into} is the database job '{job}' backs up; loading a "
            "backup over it needs --overwrite-live"
        )
    with fetching(config, job, wanted, identities, destination) as source:
        selection = wanted_by(include) if include else None
        report = extract_chain(source, target, identities, outside_links, selection)
    return Restored(source.backup, report)


@contextlib.contextmanager
def fetching(
    config: Config,
    job: str,
    wanted: str,
    identities: list[Any] | None,
    destination: str | None,
    cancel: threading.Event | None = None,
) -> Iterator[Fetching]:
    """The backup `wanted` and the ones it builds on, ready to stream in through a
    private directory of the spool (checked for room first); removed afterwards."""
    opened = open_destination(config, job, cancel=cancel, name=destination)
    try:
        backups, _ = listed(opened, job)
        backup = choose(backups, wanted)
        links = chain(backups, backup)  # an incremental needs the backups it builds on
        encrypted = next((b for b in links if b.encrypted), None)
        if encrypted is not None and not identities:
            raise RestoreError(
                f"{encrypted.backup_id} is encrypted (age, for "
                f"{', '.join(encrypted.recipients)}): give --identity FILE with the "
                "private key of one of those recipients"
            )
        spool = private_directory(config.agent.spool_dir / job, "spool_dir")
        workdir = Path(tempfile.mkdtemp(prefix="restore-", dir=spool))  # 0700, its own
        try:
            source = Fetching(opened, links, workdir)
            source.check_spool()
            yield source
        finally:  # downloaded volumes do not linger
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        opened.close()


def load_dump(target: Path, load: Load, spool: Path) -> Path:
    """After `restore` into `target`: load its dump into the database asked for (a
    PostgreSQL password goes through a passfile in a private directory of `spool`)."""
    if "/" in load.dump or load.dump in (".", "..") or "\0" in load.dump:
        raise RestoreError(f"{load.dump!r} is not a dump's name (as `files` lists it)")
    sql, custom = (target / "databases" / f"{load.dump}{ext}" for ext in (".sql", ".pgdump"))
    if sql.is_file():
        mysql = MysqlDatabase(
            type="mysql",
            name=load.into,
            host=load.host,
            port=load.port,
            socket=load.socket,
            user=load.user,
        )
        load_database(sql, mysql, load.password)
        return sql
    if custom.is_file():
        host = str(load.socket) if load.socket else load.host
        pg = PostgresDatabase(
            type="postgresql", name=load.into, host=host, port=load.port, user=load.user
        )
        work = Path(tempfile.mkdtemp(prefix="load-", dir=spool))
        try:  # a DumpFailed says what the server answered
            load_postgres(Target(pg, load.password, (), None), custom, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return custom
    raise RestoreError(
        f"the backup has no dump named {load.dump!r} (databases/{load.dump}.sql or "
        f"databases/{load.dump}.pgdump)"
    )


def live_databases(config: Config, job: str) -> set[str]:
    """Names of the MySQL and PostgreSQL databases the job dumps (wp-config.php's too,
    if readable)."""
    from backupagent.sources.wordpress import WordPressError, read_site

    spec = config.jobs[job]
    names = {d.name for d in spec.databases if d.type in ("mysql", "postgresql")}
    if spec.wordpress:
        with contextlib.suppress(WordPressError):
            names.add(read_site(spec.wordpress, spec).database)
    return names
