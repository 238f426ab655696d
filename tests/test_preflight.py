"""`check` looks at the host: what would fail the run is found before it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .conftest import WriteConfig
from .helpers import cli, python_script

CORPUS = Path(__file__).parent / "sources" / "wp-configs"


def _with(config_path: Path, old: str, new: str) -> None:
    text = config_path.read_text()
    assert old in text
    config_path.write_text(text.replace(old, new, 1))


def test_a_missing_source_fails_check(write_config: WriteConfig, tmp_path: Path) -> None:
    config = write_config()
    gone = tmp_path / "gone"
    _with(config.path, "sources = [", f'sources = ["{gone}", ')
    result = cli(config.path, "check")
    assert result.returncode == 2
    assert f"jobs.toml: [jobs.www] sources: {gone} does not exist" in result.stderr.splitlines()


def test_a_file_as_source_fails_check(write_config: WriteConfig, tmp_path: Path) -> None:
    config = write_config()
    (tmp_path / "a-file").write_text("x")
    _with(config.path, "sources = [", f'sources = ["{tmp_path / "a-file"}", ')
    result = cli(config.path, "check")
    assert result.returncode == 2 and "a-file is not a directory" in result.stderr


AS_NOBODY = """
import os, sys
from pathlib import Path
from backupagent.preflight import _unreadable, _unwritable
os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter may be under /root
print(_unreadable(Path(sys.argv[1])))
print(_unwritable(Path("/root/no-state")))
print(_unwritable(Path(sys.argv[2])))
"""


def test_an_unreadable_source_and_directories_that_cannot_be_made() -> None:
    """As a user without rights to them (the admin trying `check` as themselves)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to check as another user")
    base = Path(tempfile.mkdtemp(prefix="ba-preflight-"))
    try:
        os.chmod(base, 0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o700)
        (base / "open").mkdir()
        os.chmod(base / "open", 0o777)  # mkdir's mode passes through the umask
        result = python_script(AS_NOBODY, str(locked), str(base / "open" / "spool"))
    finally:
        shutil.rmtree(base)
    assert result.stdout.splitlines() == [
        "cannot be read by this user (uid 65534): Permission denied",
        "cannot be made by this user (uid 65534): /root is not writable",
        "None",  # its parent is writable: it can be made
    ]


def test_debians_packaged_wordpress_fails_check_with_what_to_write(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config()
    site = tmp_path / "wordpress"
    site.mkdir()
    (site / "wp-config.php").write_text((CORPUS / "debian.php").read_text())
    _with(config.path, "sources = [", f'wordpress = "{site}"\nsources = [')
    result = cli(config.path, "check")
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if "[jobs.www] wordpress:" in x]
    assert f"{site / 'wp-config.php'}: Debian's packaged WordPress" in line
    assert "wordpress_config = " in line


def test_an_unreadable_wp_config_fails_check(write_config: WriteConfig, tmp_path: Path) -> None:
    config = write_config()
    site = tmp_path / "wordpress"
    site.mkdir()
    _with(config.path, "sources = [", f'wordpress = "{site}"\nsources = [')
    result = cli(config.path, "check")
    assert result.returncode == 2
    assert f"[jobs.www] wordpress: {site / 'wp-config.php'}: cannot read" in result.stderr


def test_a_local_drill_without_the_server_programs_fails_check(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    databases = (
        'databases = [{ type = "mysql", name = "shop" }, { type = "postgresql", name = "shop2" }]'
    )
    config = write_config(job=f'{databases}\ndrill_server = "local"')
    assert "drill_server" not in cli(config.path, "check").stderr  # this host has them
    empty = tmp_path / "no-programs"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = cli(config.path, "check")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert (
        "jobs.toml: [jobs.www] drill_server: mariadb-install-db or mysql_install_db not found: "
        'a drill with drill_server = "local" needs the server programs '
        "(apt-get install mariadb-server)"
    ) in lines
    assert any(
        line.startswith("jobs.toml: [jobs.www] drill_server: ") and "postgresql" in line
        for line in lines
    )
