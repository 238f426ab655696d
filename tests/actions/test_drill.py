"""The restore drill against real MariaDB and PostgreSQL servers: scratch databases on
the job's own servers or on throwaway local ones, the live databases untouched."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from backupagent.actions.backup import run_job
from backupagent.actions.drill import differences, scratch_name
from backupagent.config import Config, load_config
from backupagent.ftpserver import LocalFtpServer
from backupagent.state import History

from ..conftest import require_system
from ..databases import MariaDB, Postgres
from ..helpers import decompress, wait_for
from ..sources.test_mysql import wrap_tool
from .test_backup import REMOTE

MY_PASSWORD = "drill 'my\" pw"
PG_PASSWORD = "drill:pg \\pw"


@pytest.fixture(scope="module")
def live(mariadb: MariaDB, postgres: Postgres) -> tuple[MariaDB, Postgres]:
    """`drillshop` on both servers, with a user each that may create databases."""
    escaped = MY_PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    mariadb.sql(f"""
        CREATE DATABASE drillshop CHARACTER SET utf8mb4;
        USE drillshop;
        CREATE TABLE items (id INT PRIMARY KEY, note TEXT);
        INSERT INTO items VALUES (1, 'a),(b'), (2, 'it''s (x'), (3, NULL), (4, ''), (5, 'five');
        CREATE TABLE `odd name(` (x INT);
        INSERT INTO `odd name(` VALUES (1), (2);
        CREATE TABLE empty_one (x INT);
        CREATE VIEW item_view AS SELECT id FROM items;
        CREATE EVENT tidy ON SCHEDULE EVERY 1 HOUR DO DELETE FROM drillshop.items WHERE id > 9;
        CREATE USER 'driller'@'localhost' IDENTIFIED BY '{escaped}';
        GRANT ALL PRIVILEGES ON *.* TO 'driller'@'localhost';
    """)
    postgres.sql(f"CREATE ROLE driller LOGIN CREATEDB PASSWORD '{PG_PASSWORD}';")
    postgres.sql("CREATE DATABASE drillpg OWNER driller;")
    postgres.sql(
        "SET ROLE driller; CREATE SCHEMA shop;"
        "CREATE TABLE shop.orders (id serial PRIMARY KEY, total numeric);"
        "INSERT INTO shop.orders (total) SELECT g * 1.5 FROM generate_series(1, 250) g;"
        'CREATE TABLE public."Mixed Case" (x int);',
        database="drillpg",
    )
    return mariadb, postgres


def _databases(tmp_path: Path, live: tuple[MariaDB, Postgres]) -> str:
    my, pg = live
    (tmp_path / "my.pass").write_text(MY_PASSWORD + "\n")
    (tmp_path / "pg.pass").write_text(PG_PASSWORD + "\n")
    app = tmp_path / "app.db"
    conn = sqlite3.connect(app)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3);")
    conn.commit()
    conn.close()
    entries = [
        {
            "type": "mysql",
            "name": "drillshop",
            "socket": str(my.socket),
            "user": "driller",
            "password_file": str(tmp_path / "my.pass"),
        },
        {
            "type": "postgresql",
            "name": "drillpg",
            "host": str(pg.socket_dir),
            "port": pg.port,
            "user": "driller",
            "password_file": str(tmp_path / "pg.pass"),
        },
        {"type": "sqlite", "path": str(app)},
    ]
    inner = ", ".join(
        "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in e.items()) + " }" for e in entries
    )
    return f"databases = [{inner}]"


def _state(live: tuple[MariaDB, Postgres]) -> tuple[str, ...]:
    """What a drill must leave as it was: every database on both servers, and the live
    databases' contents (MariaDB checksums, PostgreSQL row digests)."""
    my, pg = live
    return (
        my.sql("SHOW DATABASES"),
        my.sql("CHECKSUM TABLE items, `odd name(`, empty_one", "drillshop"),
        pg.sql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"),
        pg.sql("SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM shop.orders o", "drillpg"),
    )


def _drill(config: Config, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "backupagent", "--config", str(config.path), "drill", "www"]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=600)


def test_a_drill_loads_every_dump_into_scratch_databases_and_finds_the_counts(
    live: tuple[MariaDB, Postgres], write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config(job=_databases(tmp_path, live))
    backup = run_job(config, "www")
    assert backup.outcome == "success", (backup.error, backup.warnings)
    before = _state(live)

    done = _drill(config, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["result"] == "success" and report["backup_id"] == backup.backup_id
    by_member = {d["member"]: d for d in report["databases"]}
    my, pg = by_member["databases/drillshop.sql"], by_member["databases/drillpg.pgdump"]
    assert (my["tables"], my["rows"], my["problems"]) == (3, 7, [])
    assert (pg["tables"], pg["rows"], pg["problems"]) == (2, 250, [])
    assert by_member["databases/app.sqlite3"]["rows"] == 3
    assert my["scratch_database"].startswith("www_drill_")
    assert _state(live) == before  # no scratch database left, the live ones untouched

    with History(config.agent.state_dir) as history:
        run = history.last("www")
    assert run is not None and (run.trigger, run.result) == ("drill", "success")
    assert (
        "backupagent_last_drill_success_timestamp_seconds{"
        in (tmp_path / "metrics.prom").read_text()
    )
    assert not [p for p in (tmp_path / "spool" / "www").iterdir()]  # scratch space gone

    human = _drill(config)
    assert human.returncode == 0, human.stdout + human.stderr
    assert "OK: " in human.stdout and "3 tables, 7 rows, as counted at dump time" in human.stdout
    assert "3 database dumps loaded, 6 tables with the rows counted at dump time" in human.stdout


def test_a_tampered_dump_fails_the_drill_naming_the_table(
    live: tuple[MariaDB, Postgres],
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
) -> None:
    """A backup whose dump lost a row, with volumes and manifest rewritten to match (a
    server that lies): on the job's own server it is refused before anything loads; on
    throwaway servers it loads, and the drill names the table that came up short."""
    databases = _databases(tmp_path, live)
    config = write_config(job=databases)
    backup = run_job(config, "www")
    assert backup.outcome == "success", (backup.error, backup.warnings)
    _rewrite(ftp_server, backup.backup_id, "databases/drillshop.sql", _drop_row_five)
    before = _state(live)

    refused = _drill(config)
    assert refused.returncode == 1
    assert "its manifest differs from the one this host published" in refused.stdout
    assert _state(live) == before

    config = write_config(job=databases + '\ndrill_server = "local"')
    failed = _drill(config)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert (
        "databases/drillshop.sql: table items: 4 rows loaded, 5 counted at dump time"
        in failed.stdout
    )
    assert "databases/drillpg.pgdump" in failed.stdout  # the untampered one loaded fine
    assert "2 tables, 250 rows" in failed.stdout
    assert _state(live) == before
    with History(config.agent.state_dir) as history:
        run = history.last("www")
    assert run is not None and (run.trigger, run.result) == ("drill", "failed")
    assert "table items: 4 rows loaded" in (run.error or "")
    assert not [p for p in (tmp_path / "spool" / "www").iterdir()]


REFUSALS = {
    "a rebuilt host, with no record of the backup": [
        "this host has no record of making it",
        'set drill_server = "local" to drill it on a throwaway server',
    ],
    "a database user who may not create databases": [
        "the scratch database www_drill_",
        "could not be created on the job's server",
        "may create and drop databases named www_drill_*",
        "nothing was downloaded",  # checked before the backup streams in
    ],
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_drill_that_cannot_load_says_why_and_changes_nothing(
    case: str, live: tuple[MariaDB, Postgres], write_config: WriteConfig, tmp_path: Path
) -> None:
    databases = _databases(tmp_path, live)
    if case.startswith("a database user"):
        escaped = MY_PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
        live[0].sql(
            f"CREATE USER IF NOT EXISTS 'reader'@'localhost' IDENTIFIED BY '{escaped}';"
            "GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT ON drillshop.* "
            "TO 'reader'@'localhost';"
        )
        databases = databases.replace('"driller"', '"reader"', 1)
    config = write_config(job=databases)
    assert run_job(config, "www").outcome == "success"
    if case.startswith("a rebuilt host"):
        (tmp_path / "state" / "history.sqlite3").unlink()
    before = _state(live)
    done = _drill(config)
    assert done.returncode == 1, done.stdout + done.stderr
    for words in REFUSALS[case]:
        assert words in done.stdout
    assert _state(live) == before
    assert not [p for p in (tmp_path / "spool" / "www").iterdir()]


@pytest.fixture
def write_config(write_config: Callable[..., Config], tmp_path: Path) -> Callable[..., Config]:
    """The shared write_config, with a metrics file in [agent]."""

    def write(*, job: str = "", dest: str = "") -> Config:
        config = write_config(job=job, dest=dest)
        text = config.path.read_text().replace(
            "[agent]\n", f'[agent]\nmetrics_file = "{tmp_path}/metrics.prom"\n', 1
        )
        config.path.write_text(text)
        return load_config(config.path)

    return write


WriteConfig = Callable[..., Config]


def _drop_row_five(dump: bytes) -> bytes:
    """The dump without the row (5,'five') of `items`, whichever way rows are laid out."""
    changed, n = re.subn(rb",\n?\(5,'five'\)", b"", dump, count=1)
    assert n == 1
    return changed


def _rewrite(server: LocalFtpServer, backup_id: str, member: str, edit: Callable) -> None:
    """Replace `member` of a backup on the server, with one volume and a manifest that
    match the new bytes (what a server that lies can do)."""
    where = server.root / REMOTE
    manifest_path = where / f"{backup_id}.manifest.json"
    manifest = json.loads(manifest_path.read_bytes())
    raw = b"".join((where / v["name"]).read_bytes() for v in manifest["files"])
    tar_bytes = decompress(raw)
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tar_bytes)) as old,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as new,
    ):
        for info in old.getmembers():
            data = old.extractfile(info).read() if info.isreg() else None
            if info.name == member:
                data = edit(data)
                info.size = len(data)
            new.addfile(info, io.BytesIO(data) if data is not None else None)
    volume = zstandard.ZstdCompressor().compress(out.getvalue())
    for v in manifest["files"]:
        (where / v["name"]).unlink()
    name = f"{backup_id}.tar.zst.0001"
    (where / name).write_bytes(volume)
    digest = hashlib.sha256(volume).hexdigest()
    manifest["files"] = [{"name": name, "size": len(volume), "sha256": digest}]
    if manifest.get("archive"):
        manifest["archive"]["size"] = len(volume)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("recorded", "loaded", "expected"),
    [
        ({"a": 1, "b": 0}, {"a": 1, "b": 0, "extra": 9}, []),
        ({"a": 2}, {"a": 1}, ["table a: 1 rows loaded, 2 counted at dump time"]),
        ({"a": 2}, {}, ["table a: missing after the load (2 rows at dump time)"]),
        (
            {"z": 1, "b": 5},
            {"z": 2, "b": 5},
            ["table z: 2 rows loaded, 1 counted at dump time"],
        ),
        ({}, {"a": 1}, []),
    ],
)
def test_differences(recorded: dict, loaded: dict, expected: list[str]) -> None:
    assert differences(recorded, loaded) == expected


@pytest.mark.parametrize("job", ["www", "a-b.c", "x" * 200, "ünïcode"])
def test_scratch_names_are_plain_and_short(job: str) -> None:
    name = scratch_name(job)
    assert re.fullmatch(r"[0-9A-Za-z_]+_drill_[0-9a-f]{8}", name) and len(name) <= 63
    assert name != scratch_name(job)


def test_an_encrypted_backup_is_drilled_with_the_jobs_identity(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    from backupagent.crypto import generate

    identity, recipient = generate()
    key = tmp_path / "drill.key"
    key.write_text(identity + "\n")
    key.chmod(0o600)
    app = tmp_path / "app.db"
    conn = sqlite3.connect(app)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);")
    conn.close()
    job = f'encrypt_to = ["{recipient}"]\ndatabases = [{{ type = "sqlite", path = "{app}" }}]'

    config = write_config(job=job)
    assert _drill(config).stdout.startswith("FAILED: ")  # no backup yet
    assert run_job(config, "www").outcome == "success"
    without = _drill(config)
    assert without.returncode == 1 and "give --identity FILE" in without.stdout

    config = write_config(job=f'{job}\ndrill_schedule = "0 5 * * 0"\ndrill_identity = "{key}"')
    done = _drill(config, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (dump,) = json.loads(done.stdout)["databases"]
    assert (dump["member"], dump["tables"], dump["rows"]) == ("databases/app.sqlite3", 1, 2)


def test_hostile_sql_in_a_local_drill_reaches_nothing_outside_its_server(
    live: tuple[MariaDB, Postgres],
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
) -> None:
    """A server that lies adds SQL that writes a file (MariaDB: INTO OUTFILE), and a
    PostgreSQL dump whose table check runs a program while rows load (COPY TO PROGRAM):
    on the throwaway servers neither can, so both loads fail and nothing appears."""
    pg = live[1]
    markers = Path(tempfile.mkdtemp())  # where any user may write: only SQL rights stop it
    markers.chmod(0o1777)
    outfile, program = markers / "outfile", markers / "program"
    pg.sql("CREATE DATABASE evilpg OWNER driller;")
    pg.sql(
        "SET ROLE driller;"
        "CREATE FUNCTION touch() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
        f"EXECUTE 'COPY (SELECT 1) TO PROGRAM ''cat > {program}'''; RETURN true; END $$;"
        "CREATE TABLE t (x int CHECK (touch()));"
        "RESET ROLE; INSERT INTO t VALUES (1);",  # the check runs as the superuser here
        database="evilpg",
    )
    # made by the insert above, run as the superuser (cat reads what COPY writes: a program
    # that ends without reading may break COPY's pipe)
    program.unlink()
    databases = _databases(tmp_path, live).replace('"drillpg"', '"evilpg"')
    config = write_config(job=databases + '\ndrill_server = "local"')
    backup = run_job(config, "www")
    assert backup.outcome == "success", (backup.error, backup.warnings)
    evil = f"SELECT 'pwned' INTO OUTFILE '{outfile}';\n".encode()
    _rewrite(ftp_server, backup.backup_id, "databases/drillshop.sql", lambda d: evil + d)
    before = _state(live)

    done = _drill(config, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    problems = {d["member"]: d["problems"] for d in json.loads(done.stdout)["databases"]}
    assert problems["databases/drillshop.sql"][0].startswith("the load failed: ERROR 1290")
    assert "--secure-file-priv" in problems["databases/drillshop.sql"][0]
    assert problems["databases/evilpg.pgdump"][0].startswith("the load failed: ")
    assert "must be superuser" in problems["databases/evilpg.pgdump"][0]
    assert not outfile.exists() and not program.exists()
    assert _state(live) == before
    shutil.rmtree(markers)


def test_a_local_drill_that_may_not_switch_users_says_what_to_allow(
    live: tuple[MariaDB, Postgres], write_config: WriteConfig, tmp_path: Path
) -> None:
    """As under the systemd unit, whose capability bounding set has no CAP_SETUID: a
    throwaway server cannot run as `nobody`, and the advice says how to allow it."""
    if os.geteuid() != 0:
        pytest.skip("a process that is not root runs throwaway servers as itself")
    setpriv = shutil.which("setpriv")
    require_system(setpriv is not None, "setpriv missing (apt-get install util-linux)")
    assert setpriv is not None
    config = write_config(job=_databases(tmp_path, live) + '\ndrill_server = "local"')
    assert run_job(config, "www").outcome == "success"
    argv = [sys.executable, "-m", "backupagent", "--config", str(config.path), "drill", "www"]
    done = subprocess.run(
        [setpriv, "--bounding-set=-setuid,-setgid", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "may not switch users" in done.stdout and "CAP_SETUID and CAP_SETGID" in done.stdout

    # the shipped units' bounding set
    allowed = "-all,+dac_read_search,+dac_override,+setuid,+setgid,+chown,+kill"
    done = subprocess.run(
        [setpriv, f"--bounding-set={allowed}", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not _leftover_servers()


def test_a_drill_stopped_during_a_load_drops_its_scratch_database(
    live: tuple[MariaDB, Postgres],
    write_config: WriteConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM while the client loads (here a wrapper that says so, then hangs): the
    drill ends `aborted`, its scratch database and directory are gone."""
    config = write_config(job=_databases(tmp_path, live))
    assert run_job(config, "www").outcome == "success"
    loading = tmp_path / "loading"
    wrap_tool(
        "mariadb",
        f'case "$*" in *" -e "*) ;; *" -- www_drill_"*) touch {loading}; exec sleep 600;; esac\n'
        'exec {real} "$@"',
        tmp_path,
        monkeypatch,
    )
    before = _state(live)
    argv = [sys.executable, "-m", "backupagent", "--config", str(config.path), "drill", "www"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(loading.exists, "the load to start")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert out.startswith("ABORTED: stopped before the drill ended")
    with History(config.agent.state_dir) as history:
        run = history.last("www")
    assert run is not None and (run.trigger, run.result) == ("drill", "aborted")
    assert _state(live) == before  # the scratch database was dropped
    assert not [p for p in (tmp_path / "spool" / "www").iterdir()]


def _leftover_servers() -> list[str]:
    """Throwaway servers left running by a drill that has ended (their data directory
    is on their command line; orphaned, so their parent is now init): those of drills
    that other tests run meanwhile still have theirs."""
    found = subprocess.run(["ps", "-eo", "ppid=,args="], capture_output=True, text=True).stdout
    rows = (line.strip().split(None, 1) for line in found.splitlines())
    return [args for ppid, args in rows if ppid == "1" and "backupagent-drill-" in args]


def test_a_backup_without_row_counts_loads_with_a_warning(
    live: tuple[MariaDB, Postgres],
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
) -> None:
    """As from an agent that did not count rows yet: loaded, nothing to compare."""
    config = write_config(job=_databases(tmp_path, live) + '\ndrill_server = "local"')
    backup = run_job(config, "www")
    assert backup.outcome == "success", backup.error
    path = ftp_server.root / REMOTE / f"{backup.backup_id}.manifest.json"
    manifest = json.loads(path.read_text())
    for dump in manifest["databases"]:
        del dump["rows"]
    path.write_text(json.dumps(manifest))
    done = _drill(config, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["result"] == "warning"
    assert "loaded but not compared: the backup recorded no row counts" in report["message"]
    assert all(not d["compared"] and not d["problems"] for d in report["databases"])


def test_a_drill_creates_the_dumps_events_disabled(
    live: tuple[MariaDB, Postgres],
    write_config: WriteConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The live database's event names it (DELETE FROM drillshop.items): its copy in the
    scratch database must never run. Seen as the drill counts rows, right after the load."""
    my = live[0]
    config = write_config(job=_databases(tmp_path, live))
    assert run_job(config, "www").outcome == "success"
    seen = tmp_path / "events"
    query = (
        "SELECT event_schema, event_name, status FROM information_schema.events "
        "WHERE event_schema LIKE 'www_drill_%'"
    )
    wrap_tool(
        "mariadb",
        f'case "$*" in *"HEX(table_name)"*) {{real}} --no-defaults --socket={my.socket} '
        f'-uroot -p{my.root_password} -N -B -e "{query}" >> {seen};; esac\n'
        'exec {real} "$@"',
        tmp_path,
        monkeypatch,
    )
    done = _drill(config)
    assert done.returncode == 0, done.stdout + done.stderr
    (event,) = seen.read_text().splitlines()
    schema, name, status = event.split("\t")
    assert schema.startswith("www_drill_") and (name, status) == ("tidy", "DISABLED")
    assert "ENABLED" in my.sql(
        "SELECT status FROM information_schema.events WHERE event_schema = 'drillshop'"
    )


def test_a_sqlite_copy_that_is_not_a_database_fails_the_drill_cleanly(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """A server that lies replaces the SQLite copy (volumes and manifest to match)."""
    app = tmp_path / "app.db"
    conn = sqlite3.connect(app)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    conn.close()
    config = write_config(job=f'databases = [{{ type = "sqlite", path = "{app}" }}]')
    backup = run_job(config, "www")
    assert backup.outcome == "success", backup.error
    _rewrite(ftp_server, backup.backup_id, "databases/app.sqlite3", lambda _: b"\xff" * 4096)
    done = _drill(config, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    (dump,) = json.loads(done.stdout)["databases"]
    assert dump["problems"][0].startswith("the copy could not be read: ")
    assert "internal error" not in done.stdout
