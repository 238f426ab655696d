"""Shared fixtures: an in-process FTP server, a jobs.toml writer, a site tree."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backupagent.config import Config, load_config
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import configure

SYSTEM_TESTS_ENV = "BACKUPAGENT_SYSTEM_TESTS"


def require_system(ok: bool, why: str) -> None:
    """Skip a system test whose parts are missing, unless CI says they are required."""
    if ok:
        return
    if os.environ.get(SYSTEM_TESTS_ENV) == "required":
        pytest.fail(f"system test required ({SYSTEM_TESTS_ENV}=required) but {why}")
    pytest.skip(why)


@pytest.fixture(autouse=True)
def _quiet_logging() -> None:
    configure(verbose=False)


@pytest.fixture
def ftp_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalFtpServer]:
    """pyftpdlib on 127.0.0.1 (or the address given by indirect parametrization)."""
    root = tmp_path / "ftp-root"
    root.mkdir()
    with LocalFtpServer(root, host=getattr(request, "param", "127.0.0.1")) as server:
        yield server


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalFtpServer]:
    """A second test server with options given by indirect parametrization."""
    root = tmp_path / "custom-root"
    root.mkdir()
    with LocalFtpServer(root, **getattr(request, "param", {})) as srv:
        yield srv


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A small tree with unicode, spaces, an empty dir, symlinks and excluded parts."""
    root = tmp_path / "www"
    files = {
        "index.php": b"<?php echo 'hi';\n",
        "wp-content/uploads/caf\u00e9 menu.txt": "caf\u00e9\n".encode() * 100,
        "wp-content/uploads/big.bin": os.urandom(300_000),
        "wp-content/cache/page.html": b"cached\n",
        "logs/error.log": b"oops\n",
        "keep.log.txt": b"not a .log file\n",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty").mkdir()
    (root / "wp-content/uploads/latest").symlink_to("big.bin")
    (root / "dangling").symlink_to("/nonexistent/target")
    return root


WriteConfig = Callable[..., Config]


@pytest.fixture
def write_config(tmp_path: Path, ftp_server: LocalFtpServer, site: Path) -> WriteConfig:
    """Write a jobs.toml for one job `www` against `ftp_server`; keyword args override keys."""

    def write(*, job: str = "", dest: str = "", password: str | None = None) -> Config:
        pass_file = tmp_path / "ftp.pass"
        pass_file.write_text((ftp_server.password if password is None else password) + "\n")
        text = f"""
[agent]
state_dir = "{tmp_path}/state"
log_dir = "{tmp_path}/log"
spool_dir = "{tmp_path}/spool"

[destinations.test]
type = "ftp"
host = "{ftp_server.host}"
port = {ftp_server.port}
user = "{ftp_server.user}"
password_file = "{pass_file}"
directory = "/backups/site"
timeout = 5
keep = 3
{dest}

[jobs.www]
destination = "test"
sources = ["{site}"]
exclude = ["wp-content/cache/", "*.log"]
{job}
"""
        path = tmp_path / "jobs.toml"
        path.write_text(text)
        return load_config(path)

    return write


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway MariaDB server on a socket, shared by the session's tests."""
    from .databases import start_mariadb

    yield from start_mariadb(tmp_path_factory.mktemp("mariadb"))


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server on a socket, shared by the session's tests."""
    from .databases import start_postgres

    yield from start_postgres()
