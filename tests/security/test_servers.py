"""What a database server's contents and a dump that came back from a server can make
the agent do: database names are names (never paths, options or connection strings),
a dump's client commands never run, and a hostile SFTP server cannot hang a run."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupagent.ftpserver import LocalFtpServer

from ..actions.test_drill import _rewrite
from ..conftest import require_system
from ..databases import MariaDB, Postgres
from ..helpers import agent_table, cli
from ..sshd import Sshd, missing, running_sshd
from .jobs import ftp_jobs_toml, said
from .test_tenants import _members

MY_PW = "all 'my pw"
PG_PW = "all:pg \\pw"


def _jobs_toml(tmp_path: Path, server: LocalFtpServer, databases: str, extra: str = "") -> Path:
    site = tmp_path / "www"
    site.mkdir(exist_ok=True)
    (site / "index.php").write_text("<?php\n")
    return ftp_jobs_toml(tmp_path, server, f'sources = ["{site}"]\n{databases}\n{extra}')


def _entry(**fields: object) -> str:
    inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    return f"databases = [{{ {inner} }}]"


# --- names from `name = "all"` ------------------------------------------------------------


class _Listener:
    """A PostgreSQL server as an attacker runs one: it asks for the password in clear
    and keeps whatever arrives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.connections += 1
                with conn:
                    conn.settimeout(10)
                    with contextlib.suppress(OSError):
                        self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        first = conn.recv(8)
        self.received += first
        if struct.unpack("!I", first[4:8])[0] == 80877103:  # SSLRequest: no
            conn.sendall(b"N")
            first = conn.recv(8)
            self.received += first
        length = struct.unpack("!I", first[:4])[0]
        self.received += conn.recv(length - 8)
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        self.received += conn.recv(4096)

    def close(self) -> None:
        self.sock.close()


def test_a_postgresql_name_like_a_connection_string_stays_a_name(
    postgres: Postgres, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """Before, `name = "all"` passed each name as --dbname, which libpq expands: a
    database named `host=127.0.0.1 port=P dbname=x` sent the connection, and the
    password (the passfile matched any host), to whoever listens there."""
    listener = _Listener()
    hostile = f"host=127.0.0.1 port={listener.port} dbname=x"
    try:
        postgres.sql(f"CREATE ROLE allpg LOGIN SUPERUSER PASSWORD '{PG_PW}';")
        postgres.sql(f'CREATE DATABASE "{hostile}";')
        postgres.sql("CREATE DATABASE plainpg;")
        # (the test's own psql must quote it too, or it would connect to the listener)
        quoted = f"dbname='{hostile}'"
        postgres.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (7);", database=quoted)
        assert listener.connections == 0
        (tmp_path / "pg.pass").write_text(PG_PW + "\n")
        entry = _entry(
            type="postgresql",
            name="all",
            host=str(postgres.socket_dir),
            port=postgres.port,
            user="allpg",
            password_file=str(tmp_path / "pg.pass"),
        )
        config = _jobs_toml(tmp_path, ftp_server, entry)
        ran = cli(config, "run-job", "www", "--json")
        assert ran.returncode == 0, said(ran)
        assert listener.connections == 0
        assert PG_PW.encode() not in listener.received
        from backupagent.config import load_config

        members = _members(load_config(config), json.loads(ran.stdout)["backup_id"])
        escaped = "host%3D127.0.0.1%20port%3D" + str(listener.port) + "%20dbname%3Dx"
        assert f"databases/{escaped}.pgdump" in members
        assert "databases/plainpg.pgdump" in members
    finally:
        listener.close()
        postgres.sql(f'DROP DATABASE IF EXISTS "{hostile}";')
        postgres.sql("DROP DATABASE IF EXISTS plainpg; DROP ROLE IF EXISTS allpg;")


def test_one_odd_mysql_name_never_stops_the_others(
    mariadb: MariaDB, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """Before, a database named `site1_/../../x` (the usual `site1\\_%` grant lets a
    site create it) failed the backup of every database on the server; a name with a
    line break came back from SHOW DATABASES as two."""
    odd = ["site1_/../../x", "two\nlines", "`quoted`"]
    for name in odd:
        quoted = name.replace("`", "``")
        mariadb.sql(f"CREATE DATABASE `{quoted}`; CREATE TABLE `{quoted}`.t (x INT);")
    mariadb.sql("CREATE DATABASE IF NOT EXISTS plainmy;")
    escaped = MY_PW.replace("'", "\\'")
    mariadb.sql(
        f"CREATE USER IF NOT EXISTS 'allmy'@'localhost' IDENTIFIED BY '{escaped}';"
        "GRANT SELECT, SHOW VIEW, EVENT, TRIGGER, LOCK TABLES ON *.* TO 'allmy'@'localhost';"
    )
    (tmp_path / "my.pass").write_text(MY_PW + "\n")
    try:
        entry = _entry(
            type="mysql",
            name="all",
            socket=str(mariadb.socket),
            user="allmy",
            password_file=str(tmp_path / "my.pass"),
        )
        config = _jobs_toml(tmp_path, ftp_server, entry)
        ran = cli(config, "run-job", "www", "--json")
        assert ran.returncode == 0, said(ran)
        from backupagent.config import load_config

        members = _members(load_config(config), json.loads(ran.stdout)["backup_id"])
        for member in (
            "databases/site1_%2F..%2F..%2Fx.sql",
            "databases/two%0Alines.sql",
            "databases/%60quoted%60.sql",
            "databases/plainmy.sql",
        ):
            assert b"-- Dump completed" in members[member], member
    finally:
        for name in odd:
            mariadb.sql(f"DROP DATABASE IF EXISTS `{name.replace('`', '``')}`;")


# --- dumps that came back from a server --------------------------------------------------

CLIENT_COMMANDS = {
    "\\!": "\\! touch {marker}\n",
    "system": "system touch {marker}\n",
    "tee": "\\T {marker}\nSELECT 1;\n",
}


@pytest.fixture
def loadable(mariadb: MariaDB, ftp_server: LocalFtpServer, tmp_path: Path) -> Iterator[Path]:
    """A job backing up `loadme`, run once: its jobs.toml."""
    escaped = MY_PW.replace("'", "\\'")
    mariadb.sql(
        "CREATE DATABASE IF NOT EXISTS loadme; CREATE TABLE IF NOT EXISTS loadme.t (x INT);"
        "REPLACE INTO loadme.t VALUES (1);"
        f"CREATE USER IF NOT EXISTS 'loader'@'localhost' IDENTIFIED BY '{escaped}';"
        "GRANT ALL ON *.* TO 'loader'@'localhost';"
    )
    (tmp_path / "my.pass").write_text(MY_PW + "\n")
    entry = _entry(
        type="mysql",
        name="loadme",
        socket=str(mariadb.socket),
        user="loader",
        password_file=str(tmp_path / "my.pass"),
    )
    config = _jobs_toml(tmp_path, ftp_server, entry, 'drill_server = "local"')
    ran = cli(config, "run-job", "www", "--json")
    assert ran.returncode == 0, said(ran)
    yield config
    mariadb.sql("DROP DATABASE IF EXISTS loadme_copy;")


def _markers() -> Path:
    markers = Path(tempfile.mkdtemp())  # where any user may write: only the client stops it
    markers.chmod(0o1777)
    return markers


@pytest.mark.parametrize("command", list(CLIENT_COMMANDS))
@pytest.mark.parametrize("through", ["restore --load-database", "drill (local servers)"])
def test_a_dumps_client_commands_never_run(
    mariadb: MariaDB,
    ftp_server: LocalFtpServer,
    loadable: Path,
    tmp_path: Path,
    command: str,
    through: str,
) -> None:
    """Before, the `mariadb` client loaded a dump as root without --sandbox: a dump a
    server altered (without mariadb-dump's sandbox line) ran `\\! id > /tmp/x`."""
    markers = _markers()
    marker = markers / "ran"
    backup_id = json.loads(cli(loadable, "backups", "www", "--json").stdout)["backups"][0][
        "backup_id"
    ]
    hostile = CLIENT_COMMANDS[command].format(marker=marker).encode()
    # the sandbox line mariadb-dump writes first goes too: a server that lies drops it
    _rewrite(
        ftp_server,
        backup_id,
        "databases/loadme.sql",
        lambda dump: (
            hostile + b"\n".join(line for line in dump.split(b"\n") if b"sandbox" not in line)
        ),
    )
    if through.startswith("restore"):
        done = cli(
            loadable,
            "restore",
            "www",
            "--to",
            str(tmp_path / "restored"),
            "--load-database",
            "loadme",
            "--into",
            "loadme_copy",
            "--db-socket",
            str(mariadb.socket),
            "--db-user",
            "loader",
            "--db-password-file",
            str(tmp_path / "my.pass"),
        )
    else:
        done = cli(loadable, "drill", "www")
    assert done.returncode == 1, said(done)
    assert "sandbox" in said(done).lower()
    assert not marker.exists()
    assert list(markers.iterdir()) == []


@pytest.fixture
def hostile_pg(postgres: Postgres) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL database whose dump, loaded, would run a program (COPY FROM
    PROGRAM in a table check), read a server file (lo_import in a default) and create
    an untrusted extension (file_fdw): (its name, where a program it ran would write)."""
    markers = _markers()
    program = markers / "program"
    postgres.sql("CREATE DATABASE evilload;")
    postgres.sql(
        "CREATE TABLE sink (x text);"
        "CREATE FUNCTION run() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
        f"EXECUTE 'COPY sink FROM PROGRAM ''echo pwned | tee {program}'''; RETURN true; END $$;"
        "CREATE TABLE t (x int CHECK (run()));"
        "INSERT INTO t VALUES (1);"
        "CREATE TABLE l (id oid DEFAULT lo_import('/etc/hostname'), x int);"
        "INSERT INTO l (x) VALUES (1);"
        "CREATE EXTENSION file_fdw;",
        database="evilload",
    )
    program.unlink()  # written by the inserts above, run as the superuser here
    yield "evilload", markers
    postgres.sql("DROP DATABASE IF EXISTS evilload; DROP DATABASE IF EXISTS evilload_copy;")


def test_a_hostile_postgresql_dump_reaches_nothing_outside_its_database(
    postgres: Postgres, hostile_pg: tuple[str, Path], ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """Through a drill on throwaway servers (loaded as a role that is no superuser) and
    `restore --load-database` as such a role: the program, the server file and the
    extension are all refused, and each load fails naming why."""
    name, markers = hostile_pg
    postgres.sql(f"CREATE ROLE dumper LOGIN SUPERUSER PASSWORD '{PG_PW}';")
    postgres.sql(f"CREATE ROLE plainloader LOGIN CREATEDB PASSWORD '{PG_PW}';")
    try:
        (tmp_path / "pg.pass").write_text(PG_PW + "\n")
        entry = _entry(
            type="postgresql",
            name=name,
            host=str(postgres.socket_dir),
            port=postgres.port,
            user="dumper",
            password_file=str(tmp_path / "pg.pass"),
        )
        config = _jobs_toml(tmp_path, ftp_server, entry, 'drill_server = "local"')
        assert cli(config, "run-job", "www").returncode == 0

        drilled = cli(config, "drill", "www", "--json")
        assert drilled.returncode == 1, said(drilled)
        (checked,) = json.loads(drilled.stdout)["databases"]
        assert (
            "permission denied" in checked["problems"][0] or "superuser" in checked["problems"][0]
        )

        restored = cli(
            config,
            "restore",
            "www",
            "--to",
            str(tmp_path / "restored"),
            "--load-database",
            name,
            "--into",
            "evilload_copy",
            "--db-socket",
            str(postgres.socket_dir),
            "--db-port",
            str(postgres.port),
            "--db-user",
            "plainloader",
            "--db-password-file",
            str(tmp_path / "pg.pass"),
        )
        assert restored.returncode == 1, said(restored)
        assert list(markers.iterdir()) == []
    finally:
        postgres.sql("DROP DATABASE IF EXISTS evilload_copy;")
        postgres.sql("DROP ROLE IF EXISTS dumper; DROP ROLE IF EXISTS plainloader;")


# --- an SFTP server that never answers -------------------------------------------------

SILENT = Path(__file__).with_name("silent_sftp.py")


@pytest.mark.parametrize(
    ("silent", "during"),
    [
        (["--stat-containing", ".tar.zst"], "the size check after the upload"),
        (["--type", "12"], "every listing (READDIR)"),
    ],
)
def test_an_sftp_server_that_never_answers_cannot_hang_a_run(
    tmp_path: Path, site: Path, silent: list[str], during: str
) -> None:
    """Before, `timeout` was not applied to STAT or READDIR: a server that never
    answered them hung a run for ever (once after "backup published", in retention,
    and the run was never recorded)."""
    why = missing()
    require_system(why is None, why or "")
    server_program = Path("/usr/lib/openssh/sftp-server")
    require_system(
        server_program.exists(), "sftp-server missing (apt-get install openssh-sftp-server)"
    )
    subsystem = f"{sys.executable} {SILENT} {' '.join(silent)} -- {server_program}"
    with running_sshd(tmp_path / "sshd", subsystem=subsystem) as server:
        config = _sftp_config(tmp_path, site, server)
        # a server that never answers: how long `timeout` is cannot change the outcome
        ran = cli(config, "run-job", "www", "--json", timeout=120)
        history = cli(config, "history", "www", "--json")
    assert ran.returncode in (0, 1), said(ran)
    assert "timed out" in said(ran), said(ran)
    runs = json.loads(history.stdout)["runs"]
    assert runs[0]["result"] != "running"


def _sftp_config(tmp_path: Path, site: Path, server: Sshd) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(
        agent_table(tmp_path)
        + f"""
[destinations.box]
type = "sftp"
host = "127.0.0.1"
port = {server.port}
user = "{server.user}"
key_file = "{server.key_file}"
host_key = "{server.fingerprint}"
directory = "{server.root}/backups"
timeout = 2
retries = 0

[jobs.www]
destination = "box"
sources = ["{site}"]
"""
    )
    return path
