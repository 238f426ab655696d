"""Fixtures of the hostile-tenant suite: real local users (a site's owner and another
user), and a MariaDB server those users can reach (pytest's own directories are
private to root, and a site's database clients run as its owner)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import require_system
from ..databases import MariaDB, start_mariadb


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def chown(self, *paths: Path) -> None:
        for path in paths:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def run(self, *argv: str) -> None:
        """A command as this user (what they could do on the host)."""
        subprocess.run(argv, check=True, user=self.uid, group=self.gid, extra_groups=[], timeout=60)


@dataclass(frozen=True)
class Tenants:
    owner: User  # owns a site: its files, wp-config.php
    other: User  # any other local user


def _user(name: str) -> User:
    subprocess.run(
        [
            "useradd",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session")
def tenants() -> Iterator[Tenants]:
    """Two users made for this session (one set per xdist worker), removed after."""
    require_system(os.geteuid() == 0, "the hostile-tenant tests make users: they need root")
    require_system(shutil.which("useradd") is not None, "useradd missing (apt-get install passwd)")
    tag = secrets.token_hex(3)
    made = [_user(f"ba-owner-{tag}"), _user(f"ba-other-{tag}")]
    try:
        yield Tenants(*made)
    finally:
        for user in made:
            subprocess.run(["userdel", user.name], check=False, capture_output=True)


@pytest.fixture(scope="session")
def reachable_mariadb() -> Iterator[MariaDB]:
    """A throwaway MariaDB whose socket any local user can reach."""
    base = Path(tempfile.mkdtemp(prefix="backupagent-tenant-db-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield from start_mariadb(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's are root's alone): sites live here."""
    base = Path(tempfile.mkdtemp(prefix="backupagent-tenant-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
