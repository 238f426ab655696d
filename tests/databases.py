"""Throwaway database servers for tests: MariaDB and PostgreSQL on sockets in temp dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import require_system


@dataclass
class MariaDB:
    base: Path
    socket: Path
    root_password: str = "root-pw"

    def sql(
        self, statement: str, database: str = "", user: str = "root", password: str | None = None
    ) -> str:
        """Run SQL as root (or another user) through the socket; return tab-separated rows."""
        argv = ["mariadb", "--no-defaults", f"--socket={self.socket}", f"--user={user}", "-N", "-B",
                "--default-character-set=utf8mb4"]
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


def _wait(check, what: str, seconds: float = 30) -> None:
    """Poll `check` until it returns True, bounded; the server reports readiness no other way."""
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"{what} did not become ready in {seconds}s")
        time.sleep(0.05)


def start_mariadb(base: Path) -> Iterator[MariaDB]:
    """mariadb-install-db + mariadbd on a socket in `base`; stopped when the generator closes."""
    tools = ("mariadb-install-db", "mariadbd", "mariadb", "mariadb-dump", "mariadb-admin")
    missing = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    require_system(
        not missing, f"MariaDB tools missing: {', '.join(missing)} (apt-get install mariadb-server)"
    )
    data, sock = base / "data", base / "mysqld.sock"
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *user,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
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

        _wait(ready, "mariadbd")
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
