"""Throwaway local MariaDB and PostgreSQL servers for the restore drill (`drill_server =
"local"`): a fresh data directory in the temporary directory, a socket only (no TCP),
gone when the drill ends. Nothing of a live server is used or reachable.

A dump from the network may be hostile, and SQL can reach outside a database (MySQL's
INTO OUTFILE and plugins, PostgreSQL's COPY TO PROGRAM). So a throwaway server runs as
an unprivileged user (`nobody`, when the agent is root), MariaDB with file access and
plugin loading confined to an empty directory, and PostgreSQL dumps load as a role that
is not a superuser.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

START_SECONDS = 120  # a server not answering by then has failed to start
STOP_SECONDS = 60
RUN_AS = "nobody"  # who runs a throwaway server when the agent is root
PG_LOADER = "drill"  # the PostgreSQL role dumps load as: not a superuser


class ServerFailed(Exception):
    """A throwaway server could not be started; the reason and what to install or allow."""


@dataclass(frozen=True)
class Server:
    """How to reach a throwaway server: `socket` is MariaDB's socket file or
    PostgreSQL's socket directory; `admin` creates and drops databases, `user` loads
    into them."""

    engine: str
    socket: Path
    user: str
    admin: str
    port: int | None = None


@dataclass(frozen=True)
class _Account:
    """Who the server's processes run as (None: this process's own user)."""

    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = field(default=None)

    def run(self, argv: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=START_SECONDS,
                cwd="/",
                user=self.uid,
                group=self.gid,
                extra_groups=self.groups,
            )
        except PermissionError:
            raise _cannot_switch() from None
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace")[-1500:].strip()
            raise ServerFailed(f"{what} failed: {stderr}")
        return done

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as errors:
            return subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                cwd="/",
                user=self.uid,
                group=self.gid,
                extra_groups=self.groups,
            )

    def stop(self, proc: subprocess.Popen[bytes], signal_number: int) -> None:
        """Signal the server to stop, then kill it if it has not within STOP_SECONDS.
        Signals go through `kill` run as the server's user: root without CAP_KILL (the
        units' bounding set) may not signal another user's process."""
        for number in (signal_number, signal.SIGKILL):
            if proc.poll() is not None:
                break
            if self.uid is None:
                proc.send_signal(number)
            else:
                with contextlib.suppress(PermissionError, subprocess.TimeoutExpired):
                    subprocess.run(
                        ["kill", f"-{int(number)}", str(proc.pid)],
                        capture_output=True,
                        timeout=30,
                        user=self.uid,
                        group=self.gid,
                        extra_groups=self.groups,
                    )
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            structlog.get_logger("backupagent.drill").warning(
                "a throwaway server did not stop", pid=proc.pid
            )


def _account() -> _Account:
    if os.geteuid() != 0:
        return _Account()
    try:
        user = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise ServerFailed(
            f"a throwaway server runs as the user {RUN_AS!r}; there is none"
        ) from None
    return _Account(user.pw_uid, user.pw_gid, [])


def _cannot_switch() -> ServerFailed:
    return ServerFailed(
        f"a throwaway server runs as the user {RUN_AS!r}, and this process may not switch "
        "users (under systemd: the unit's CapabilityBoundingSet lacks CAP_SETUID and "
        "CAP_SETGID, which the shipped units have: install them again with scripts/install, "
        'README "Running under systemd"), or set drill_server = "configured"'
    )


def _tool(names: tuple[str, ...], package: str, extra: tuple[str, ...] = ()) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (p for d in extra for p in sorted(glob.glob(d + name))[-1:]), None
        )
        if found:
            return found
    raise ServerFailed(
        f'{" or ".join(names)} not found: a drill with drill_server = "local" needs '
        f"the server programs (apt-get install {package})"
    )


def _ready(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Wait, bounded, until `check` passes: neither server says so another way that
    every build has."""
    deadline = time.monotonic() + START_SECONDS
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise ServerFailed(f"the throwaway {what} did not start: {tail.strip()}")
        time.sleep(0.1)


@contextlib.contextmanager
def _scratch_directory(engine: str) -> Iterator[Path]:
    """A new path in the temporary directory, made by the server's first program (as
    its user, mode 0700 under the agent's umask) and removed afterwards."""
    base = Path(tempfile.gettempdir()) / f"backupagent-drill-{engine}-{secrets.token_hex(8)}"
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


PG_BIN = ("/usr/lib/postgresql/*/bin/",)  # Debian keeps the server programs off PATH


def _mariadb_programs() -> tuple[str, str, str]:
    return (
        _tool(("mariadb-install-db", "mysql_install_db"), "mariadb-server"),
        _tool(("mariadbd", "mysqld"), "mariadb-server", ("/usr/sbin/",)),
        _tool(("mariadb-admin", "mysqladmin"), "mariadb-client"),
    )


def _postgres_programs() -> tuple[str, str, str, str]:
    return (
        _tool(("initdb",), "postgresql", PG_BIN),
        _tool(("postgres",), "postgresql", PG_BIN),
        _tool(("pg_isready",), "postgresql-client", PG_BIN),
        _tool(("psql",), "postgresql-client"),
    )


def installed(engine: str) -> None:
    """Raise ServerFailed, saying what to install, unless a throwaway server of
    `engine` could be started (for `check`)."""
    (_mariadb_programs if engine == "mysql" else _postgres_programs)()


@contextlib.contextmanager
def mariadb() -> Iterator[Server]:
    """mariadb-install-db and mariadbd, with INTO OUTFILE, LOAD DATA and plugins
    confined to an empty directory."""
    install, daemon, admin = _mariadb_programs()
    account = _account()
    user = pwd.getpwuid(os.geteuid()).pw_name  # socket authentication, as this user
    with _scratch_directory("mysql") as base:
        data, sock, log, empty = base / "data", base / "sock", base / "error.log", base / "none"
        account.run(
            [install, "--no-defaults", f"--datadir={data}", "--skip-test-db"],
            "mariadb-install-db",
        )
        empty.mkdir()
        proc = account.start(
            [
                daemon,
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                "--skip-networking",
                f"--pid-file={base / 'mariadbd.pid'}",
                f"--secure-file-priv={empty}",
                f"--plugin-dir={empty}",
                "--local-infile=0",
                "--innodb-buffer-pool-size=64M",
            ],
            log,
        )
        try:

            def answers() -> bool:
                argv = [admin, "--no-defaults", f"--socket={sock}", f"--user={user}", "ping"]
                return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

            _ready(answers, proc, "MariaDB server", log)
            structlog.get_logger("backupagent.drill").info(
                "throwaway server started", engine="mysql"
            )
            yield Server("mysql", sock, user, user)
        finally:
            account.stop(proc, signal.SIGTERM)


@contextlib.contextmanager
def postgres() -> Iterator[Server]:
    """initdb and postgres; dumps load as the role `drill`, which is no superuser."""
    initdb, daemon, ready, psql = _postgres_programs()
    account = _account()
    with _scratch_directory("pg") as data:
        account.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], "initdb"
        )
        log = data / "server.log"
        proc = account.start(
            [daemon, "-D", str(data), "-k", str(data), "-c", "listen_addresses=", "-p", "5432"],
            log,
        )
        try:
            where = ["-h", str(data), "-p", "5432"]

            def answers() -> bool:
                argv = [ready, "-q", *where]
                return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

            _ready(answers, proc, "PostgreSQL server", log)
            create = f"CREATE ROLE {PG_LOADER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            subprocess.run(
                [psql, "-X", "-q", *where, "-U", "postgres", "-d", "postgres", "-c", create],
                check=True,
                capture_output=True,
                timeout=60,
            )
            structlog.get_logger("backupagent.drill").info(
                "throwaway server started", engine="postgresql"
            )
            yield Server("postgresql", data, PG_LOADER, "postgres", 5432)
        finally:
            account.stop(proc, signal.SIGINT)  # PostgreSQL's fast shutdown


def start(engine: str) -> contextlib.AbstractContextManager[Server]:
    """A throwaway server of `engine` ("mysql" or "postgresql")."""
    return mariadb() if engine == "mysql" else postgres()
