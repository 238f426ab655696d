"""Throwaway local MariaDB and PostgreSQL servers for the restore drill (`drill_server =
"local"`): a fresh data directory, a socket only (no TCP), gone when the drill ends.
Nothing of a live server is used or reachable: a drilled dump can harm nothing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

START_SECONDS = 120  # a server not answering by then has failed to start
STOP_SECONDS = 60
PG_USER = "postgres"  # who runs a throwaway PostgreSQL when the agent is root


class ServerFailed(Exception):
    """A throwaway server could not be started; the reason and what to install or allow."""


@dataclass(frozen=True)
class Server:
    """How to reach a throwaway server: `socket` is MariaDB's socket file or
    PostgreSQL's socket directory."""

    engine: str
    socket: Path
    user: str
    port: int | None = None


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


def _stop(proc: subprocess.Popen[bytes], signal_number: int) -> None:
    if proc.poll() is None:
        proc.send_signal(signal_number)
    try:
        proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def mariadb(base: Path) -> Iterator[Server]:
    """mariadb-install-db and mariadbd with its data in `base` (a private directory of
    the drill) and its socket in a private temporary directory (a socket's path is
    limited to 107 bytes; the spool's may be longer)."""
    install = _tool(("mariadb-install-db", "mysql_install_db"), "mariadb-server")
    daemon = _tool(("mariadbd", "mysqld"), "mariadb-server", ("/usr/sbin/",))
    admin = _tool(("mariadb-admin", "mysqladmin"), "mariadb-client")
    sockets = Path(tempfile.mkdtemp(prefix="backupagent-drill-"))
    try:
        yield from _mariadb(install, daemon, admin, base, sockets / "mysqld.sock")
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def _mariadb(install: str, daemon: str, admin: str, base: Path, sock: Path) -> Iterator[Server]:
    data, log = base / "data", base / "error.log"
    user = pwd.getpwuid(os.geteuid()).pw_name  # socket authentication, as this user
    as_user = [f"--user={user}"]
    done = subprocess.run(
        [install, "--no-defaults", f"--datadir={data}", "--skip-test-db", *as_user],
        capture_output=True,
        timeout=START_SECONDS,
    )
    if done.returncode != 0:
        raise ServerFailed(
            f"mariadb-install-db failed: {done.stderr.decode(errors='replace')[-1500:]}"
        )
    proc = subprocess.Popen(
        [
            daemon,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={sock}",
            "--skip-networking",
            f"--pid-file={base / 'mariadbd.pid'}",
            f"--log-error={log}",
            "--innodb-buffer-pool-size=64M",
            *as_user,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers() -> bool:
            argv = [admin, "--no-defaults", f"--socket={sock}", f"--user={user}", "ping"]
            return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

        _ready(answers, proc, "MariaDB server", log)
        structlog.get_logger("backupagent.drill").info("throwaway server started", engine="mysql")
        yield Server("mysql", sock, user)
    finally:
        _stop(proc, 15)


@contextlib.contextmanager
def postgres() -> Iterator[Server]:
    """initdb and postgres in a new directory of the temporary directory (which the
    `postgres` user can reach: PostgreSQL refuses to run as root)."""
    pg_bin = ("/usr/lib/postgresql/*/bin/",)
    initdb = _tool(("initdb",), "postgresql", pg_bin)
    daemon = _tool(("postgres",), "postgresql", pg_bin)
    ready = _tool(("pg_isready",), "postgresql-client", pg_bin)
    uid: int | None = None  # unchanged, unless root: then PG_USER's
    gid: int | None = None
    groups: list[int] | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            raise ServerFailed(
                f"a throwaway PostgreSQL runs as the user {PG_USER!r}, and there is none "
                "(apt-get install postgresql creates it)"
            ) from None
        uid, gid, groups = owner.pw_uid, owner.pw_gid, []
    # initdb makes the directory itself, owned by whoever runs it, mode 0700
    data = Path(tempfile.gettempdir()) / f"backupagent-drill-pg-{secrets.token_hex(8)}"
    log = data / "server.log"
    try:
        try:
            done = subprocess.run(
                [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                capture_output=True,
                timeout=START_SECONDS,
                cwd="/",
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        except PermissionError:
            raise ServerFailed(
                f"a throwaway PostgreSQL cannot run as root, and this process may not "
                f"switch to the user {PG_USER!r} (under systemd: the unit's "
                "CapabilityBoundingSet lacks CAP_SETUID and CAP_SETGID; add them with a "
                'drop-in, README "Restore drills"), or set drill_server = "configured"'
            ) from None
        if done.returncode != 0:
            raise ServerFailed(f"initdb failed: {done.stderr.decode(errors='replace')[-1500:]}")
        with log.open("ab") as errors:
            proc = subprocess.Popen(
                [daemon, "-D", str(data), "-k", str(data), "-c", "listen_addresses=", "-p", "5432"],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                cwd="/",
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        try:

            def answers() -> bool:
                argv = [ready, "-q", "-h", str(data), "-p", "5432"]
                return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

            _ready(answers, proc, "PostgreSQL server", log)
            structlog.get_logger("backupagent.drill").info(
                "throwaway server started", engine="postgresql"
            )
            yield Server("postgresql", data, "postgres", 5432)
        finally:
            _stop(proc, 2)  # SIGINT: PostgreSQL's fast shutdown
    finally:
        shutil.rmtree(data, ignore_errors=True)


def start(engine: str, base: Path) -> contextlib.AbstractContextManager[Server]:
    """A throwaway server of `engine` ("mysql" or "postgresql")."""
    return mariadb(base) if engine == "mysql" else postgres()
