"""The systemd units: valid for systemd-analyze, and saying what the README promises."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_system

UNITS = Path(__file__).parent.parent / "backupagent" / "share" / "systemd"


def _installed_binary() -> str:
    beside = Path(sys.executable).parent / "backupagent"
    return str(beside) if beside.exists() else shutil.which("backupagent") or ""


def test_units_verify(tmp_path: Path) -> None:
    require_system(
        shutil.which("systemd-analyze") is not None,
        "systemd-analyze missing (apt-get install systemd)",
    )
    binary = _installed_binary()
    assert binary, "backupagent is not installed"
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/usr/local/bin/backupagent", binary)
        name = unit.name.replace("@.", "@nightly.")  # verify a template through an instance
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(f"./{p.name}" for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize(
    ("name", "section", "key", "value"),
    [
        ("backupagent.service", "Service", "Type", "notify"),
        ("backupagent.service", "Service", "ExecReload", "/bin/kill -HUP $MAINPID"),
        ("backupagent.service", "Service", "Restart", "on-failure"),
        ("backupagent.service", "Service", "RestartPreventExitStatus", "2"),  # a bad config
        ("backupagent.service", "Service", "ProtectSystem", "strict"),
        ("backupagent.service", "Service", "NoNewPrivileges", "yes"),
        ("backupagent.service", "Service", "SystemCallFilter", "@system-service"),
        ("backupagent-run@.service", "Service", "SuccessExitStatus", "75"),
        ("backupagent-run@.timer", "Timer", "Persistent", "true"),
        ("backupagent-run@.timer", "Timer", "RandomizedDelaySec", "30min"),
    ],
)
def test_unit_settings(name: str, section: str, key: str, value: str) -> None:
    assert _unit(name)[section][key] == value


def test_daemon_unit_runs_the_daemon() -> None:
    assert _unit("backupagent.service")["Service"]["ExecStart"].endswith(" daemon")
    assert "run-job %i" in _unit("backupagent-run@.service")["Service"]["ExecStart"]


@pytest.mark.parametrize("name", ["backupagent.service", "backupagent-run@.service"])
def test_the_example_metrics_file_is_writable_under_the_units(name: str) -> None:
    """ProtectSystem=strict makes / read-only: the example's metrics_file directory must
    be one the unit may write (else the run warns and the file never appears)."""
    import re

    text = (UNITS.parent / "jobs.example.toml").read_text()
    found = re.search(r'^# metrics_file = "([^"]+)"', text, re.MULTILINE)  # commented out
    assert found is not None
    directory = str(Path(found[1]).parent)
    writable = _unit(name)["Service"]["ReadWritePaths"].split()
    assert directory in [path.lstrip("-") for path in writable]
    assert directory == "/var/lib/prometheus/node-exporter"  # Debian's textfile directory
