"""Throwaway database servers for tests: MariaDB and PostgreSQL on sockets in temp dirs."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import require_system
from .helpers import wait_for


@dataclass
class MariaDB:
    base: Path
    socket: Path
    root_password: str = "root-pw"

    def sql(
        self, statement: str, database: str = "", user: str = "root", password: str | None = None
    ) -> str:
        """Run SQL as root (or another user) through the socket; return tab-separated rows."""
        argv = [
            "mariadb",
            "--no-defaults",
            f"--socket={self.socket}",
            f"--user={user}",
            "-N",
            "-B",
            "--default-character-set=utf8mb4",
        ]
        env = {**os.environ, "MYSQL_PWD": self.root_password if password is None else password}
        if database:
            argv.append(database)
        result = subprocess.run(
            argv, input=statement, capture_output=True, text=True, env=env, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb failed: {result.stderr.strip()}")
        return result.stdout

    def load(self, database: str, dump: bytes) -> None:
        env = {**os.environ, "MYSQL_PWD": self.root_password}
        subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root", database],
            input=dump,
            check=True,
            env=env,
            timeout=300,
        )


def start_mariadb(base: Path) -> Iterator[MariaDB]:
    """mariadb-install-db + mariadbd on a socket in `base`; stopped when the generator closes."""
    tools = ("mariadb-install-db", "mariadbd", "mariadb", "mariadb-dump", "mariadb-admin")
    missing = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    require_system(
        not missing, f"MariaDB tools missing: {', '.join(missing)} (apt-get install mariadb-server)"
    )
    data, sock = base / "data", base / "mysqld.sock"
    user = ["--user=root"] if os.geteuid() == 0 else []
    # its own temporary directory: bootstraps started at one instant collided in /tmp
    # ("Could not remove temporary table '/tmp/#sql-temptable-...'")
    (base / "tmp").mkdir(parents=True)
    os.chmod(base / "tmp", 0o1777)
    env = {**os.environ, "TMPDIR": str(base / "tmp")}
    installed = subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *user,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if installed.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed: {installed.stdout}{installed.stderr}")
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    server = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={sock}",
            "--skip-networking",
            f"--pid-file={base / 'mariadbd.pid'}",
            f"--log-error={base / 'error.log'}",
            "--innodb-buffer-pool-size=64M",
            f"--tmpdir={base / 'tmp'}",
            *user,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = MariaDB(base, sock)
    try:

        def ready() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(base / 'error.log').read_text()[-2000:]}")
            return (
                subprocess.run(
                    ["mariadb-admin", "--no-defaults", f"--socket={sock}", "--user=root", "status"],
                    capture_output=True,
                    timeout=30,
                ).returncode
                == 0
            )

        wait_for(ready, "mariadbd to be ready")
        subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={sock}", "--user=root"],
            input=f"ALTER USER root@localhost IDENTIFIED BY '{db.root_password}';",
            text=True,
            check=True,
            timeout=60,
        )
        yield db
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@dataclass
class Postgres:
    base: Path
    socket_dir: Path
    port: int
    superuser_password: str = "pg-super-pw"

    def _env(self, password: str | None) -> dict[str, str]:
        return {
            **os.environ,
            "PGPASSWORD": password or self.superuser_password,
            "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port),
        }

    def sql(self, statement: str, database: str = "postgres", user: str = "postgres") -> str:
        result = subprocess.run(
            ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database],
            input=statement,
            capture_output=True,
            text=True,
            env=self._env(None),
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def restore(self, database: str, dump: Path) -> None:
        subprocess.run(
            ["pg_restore", "-U", "postgres", "--no-owner", "-d", database, str(dump)],
            check=True,
            env=self._env(None),
            capture_output=True,
            timeout=300,
        )


def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


def start_postgres() -> Iterator[Postgres]:
    """initdb + postgres on a socket in a fresh temp dir (as the postgres user when root)."""
    tools = {name: _pg_bin(name) for name in ("initdb", "postgres", "pg_isready")}
    missing = [n for n, p in tools.items() if p is None]
    missing += [t for t in ("psql", "pg_dump", "pg_restore") if shutil.which(t) is None]
    require_system(
        not missing, f"PostgreSQL tools missing: {', '.join(missing)} (apt-get install postgresql)"
    )
    as_user: dict[str, str] = {}
    base = Path(tempfile.mkdtemp(prefix="ba-pg-"))
    db = Postgres(base, base, 54329)
    pwfile = base / "pw"
    pwfile.write_text(db.superuser_password + "\n")
    if os.geteuid() == 0:  # postgres refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (base, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = {"user": "postgres", "group": "postgres"}
    server = None
    try:
        subprocess.run(
            [
                tools["initdb"],
                "-D",
                str(base / "data"),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=300,
            cwd=base,
            **as_user,
        )
        server = subprocess.Popen(
            [
                tools["postgres"],
                "-D",
                str(base / "data"),
                "-k",
                str(base),
                "-c",
                "listen_addresses=",
                "-p",
                str(db.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=base,
            **as_user,
        )

        def ready() -> bool:
            if server.poll() is not None:
                raise RuntimeError("postgres exited during start-up")
            return (
                subprocess.run(
                    [tools["pg_isready"], "-h", str(base), "-p", str(db.port)],
                    capture_output=True,
                    timeout=30,
                ).returncode
                == 0
            )

        wait_for(ready, "postgres to be ready")
        yield db
    finally:
        if server is not None:
            server.send_signal(2)  # SIGINT: fast shutdown
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(base, ignore_errors=True)
