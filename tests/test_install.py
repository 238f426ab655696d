"""scripts/install: a virtualenv, the command where the units run it, the units, the
config from the example (0600, kept on upgrade), the agent's directories. Below
`--root`, so the machine running the tests is not changed."""

from __future__ import annotations

import configparser
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
SHARE = REPO / "backupagent" / "share"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    _install(root)
    return root


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # pip builds the wheel in the checkout's build/: xdist workers take turns (two at
    # once failed with "File exists: build/bdist.linux-x86_64/wheel/...dist-info")
    lock = Path(tempfile.gettempdir()) / f"backupagent-install-{os.stat(REPO).st_ino}.lock"
    with lock.open("w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        result = subprocess.run(
            [str(REPO / "scripts" / "install"), "--root", str(root)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr
    return result


def test_the_command_is_linked_where_the_units_run_it(installed: Path) -> None:
    command = installed / "usr/local/bin/backupagent"
    assert command.is_symlink()
    assert os.readlink(command) == str(installed / "opt/backupagent/bin/backupagent")
    version = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "backupagent, version" in version.stdout
    for name in ("backupagent.service", "backupagent-run@.service"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(installed / "etc/systemd/system" / name)
        assert unit["Service"]["ExecStart"].startswith("/usr/local/bin/backupagent ")


def test_units_and_example_come_from_the_installed_package(installed: Path) -> None:
    """The wheel carries them: the installed copy, not the checkout, is what was used."""
    for unit in (SHARE / "systemd").iterdir():
        assert (installed / "etc/systemd/system" / unit.name).read_text() == unit.read_text()
    generated = subprocess.run(
        [installed / "usr/local/bin/backupagent", "config", "generate"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert generated.stdout == (SHARE / "jobs.example.toml").read_text()


def test_config_and_directories(installed: Path) -> None:
    config = installed / "etc/backupagent/jobs.toml"
    assert config.read_text() == (SHARE / "jobs.example.toml").read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    for directory in ("var/lib/backupagent", "var/log/backupagent"):
        assert stat.S_IMODE((installed / directory).stat().st_mode) == 0o700


def test_a_second_install_upgrades_and_keeps_the_config(installed: Path) -> None:
    config = installed / "etc/backupagent/jobs.toml"
    config.write_text("# the admin's own\n")
    result = _install(installed)
    assert config.read_text() == "# the admin's own\n"
    assert "kept as it was" in result.stdout
    assert (installed / "usr/local/bin/backupagent").resolve().exists()


def test_the_command_runs_on_the_systems_python_for_every_user(installed: Path) -> None:
    """Not the first python3 on PATH (root's pyenv here): other users may run it."""
    config = (installed / "opt/backupagent/pyvenv.cfg").read_text()
    home = next(line.split("=", 1)[1].strip() for line in config.splitlines() if "home" in line)
    if Path("/usr/bin/python3").exists():
        assert home == "/usr/bin"
    if os.geteuid() == 0 and shutil.which("setpriv"):  # the interpreter the venv runs on
        ran = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             str(Path(home) / "python3"), "-c", "print('ran')"],
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
        assert ran.stdout == "ran\n", ran.stderr


def test_an_install_made_on_another_interpreter_is_made_again(tmp_path: Path) -> None:
    """An older scripts/install took the first python3 on PATH: venv cannot move that
    one to the system's interpreter in place (ensurepip failed), so it is made anew."""
    system = Path("/usr/bin/python3")
    if not system.exists() or Path(sys.executable).resolve() == system.resolve():
        pytest.skip("needs a python3 other than /usr/bin/python3 running the tests")
    venv = tmp_path / "opt/backupagent"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    _install(tmp_path)
    assert (venv / "bin/python3").resolve() == system.resolve()
    assert (
        subprocess.run([str(tmp_path / "usr/local/bin/backupagent"), "--version"]).returncode == 0
    )


def test_without_root_and_without_root_dir_it_refuses() -> None:
    if os.geteuid() != 0:
        argv = [str(REPO / "scripts" / "install")]
    else:  # as nobody, from a copy nobody may read (the checkout may sit in a 0700 dir)
        base = Path(tempfile.mkdtemp(prefix="ba-install-"))
        os.chmod(base, 0o755)
        shutil.copy(REPO / "scripts" / "install", base / "install")
        argv = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(base / "install"),
        ]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        if os.geteuid() == 0:
            shutil.rmtree(base)
    assert result.returncode == 2, result.stderr
    assert "run it as root" in result.stderr
