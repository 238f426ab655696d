"""A job with two destinations (FTP and a local directory) where one fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.config import Config, load_config
from backupagent.ftpserver import LocalFtpServer
from backupagent.retention import complete_backups
from backupagent.state import History

from ..helpers import agent_table, cli, ftp_table


def two_destinations(
    tmp_path: Path, site: Path, server: LocalFtpServer, password: str, require: str = "all"
) -> Config:
    (tmp_path / "ftp.pass").write_text(password + "\n")
    text = f"""
{agent_table(tmp_path, f'metrics_file = "{tmp_path}/metrics.prom"')}
{ftp_table("offsite", server, tmp_path / "ftp.pass", 'directory = "/backups"')}
[destinations.nas]
type = "local"
path = "{tmp_path}/nas"

[jobs.www]
destinations = ["offsite", "nas"]
require = "{require}"
sources = ["{site}"]
volume_size = "64K"
"""
    (tmp_path / "jobs.toml").write_text(text)
    return load_config(tmp_path / "jobs.toml")


def held(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_both_destinations_get_the_same_backup(
    tmp_path: Path, site: Path, ftp_server: LocalFtpServer
) -> None:
    config = two_destinations(tmp_path, site, ftp_server, ftp_server.password)
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    on_ftp = held(ftp_server.root / "backups")
    assert on_ftp == held(tmp_path / "nas") and len(on_ftp) > 2  # several volumes
    for name in on_ftp:
        assert (ftp_server.root / "backups" / name).read_bytes() == (
            tmp_path / "nas" / name
        ).read_bytes() or name.endswith(".manifest.json")
    assert [(d.name, d.outcome) for d in result.destinations] == [
        ("offsite", "success"),
        ("nas", "success"),
    ]
    both = cli(config.path, "backups", "www")
    assert both.returncode == 2 and "--destination" in both.stderr
    for name in ("offsite", "nas"):
        listing = cli(config.path, "backups", "www", "--destination", name)
        assert listing.returncode == 0 and result.backup_id in listing.stdout


def test_with_require_all_one_failing_destination_fails_the_run_everywhere(
    tmp_path: Path, site: Path, ftp_server: LocalFtpServer
) -> None:
    config = two_destinations(tmp_path, site, ftp_server, "wrong password")
    result = run_job(config, "www")
    assert result.outcome == "failed"
    assert "[destinations.offsite]" in (result.suggestion or "")
    assert held(ftp_server.root / "backups") == [] and held(tmp_path / "nas") == []
    assert [(d.name, d.outcome) for d in result.destinations] == [
        ("offsite", "failed"),
        ("nas", "aborted"),
    ]


@pytest.mark.parametrize("failing", ["at login", "mid-upload"])
def test_with_require_any_the_other_destination_keeps_the_backup(
    tmp_path: Path, site: Path, ftp_server: LocalFtpServer, failing: str
) -> None:
    password = ftp_server.password
    if failing == "at login":
        password = "wrong password"
    else:  # the second volume's upload is refused for good
        ftp_server.faults = {"STOR": [None, "553 Could not create file."]}
    config = two_destinations(tmp_path, site, ftp_server, password, require="any")
    result = run_job(config, "www")
    assert result.outcome == "warning", result.error
    assert result.exit_code == 0
    nas = held(tmp_path / "nas")
    assert [b.backup_id for b in complete_backups("www", nas)] == [result.backup_id]
    assert held(ftp_server.root / "backups") == []  # what reached it was rolled back
    assert any(w.startswith("offsite: this destination failed") for w in result.warnings)
    assert "[destinations.offsite]" in (result.suggestion or "")
    assert [(d.name, d.outcome) for d in result.destinations] == [
        ("offsite", "failed"),
        ("nas", "success"),
    ]
    with History(config.agent.state_dir) as history:
        run = history.last("www")
    assert run is not None and [d["result"] for d in run.destination_results] == [
        "failed",
        "success",
    ]
    metrics = (tmp_path / "metrics.prom").read_text()
    assert (
        'backupagent_last_run_destination_result{job="www",destination="offsite",result="failed"} 1'
        in metrics
    )
    assert cli(config.path, "history", "www").returncode == 0
    again = cli(config.path, "run-job", "www")  # the summary shows each destination
    assert again.returncode == 0
    offsite = "FAILED" if failing == "at login" else "OK"  # the fault table was used up
    assert f"  offsite: {offsite}" in again.stdout and "  nas: OK" in again.stdout
    events = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert any(e["event"] == "suggestion" and e.get("destination") == "offsite" for e in events)


def test_a_mode_flip_for_one_of_two_ftp_destinations_goes_under_that_destination(
    tmp_path: Path, site: Path, ftp_server: LocalFtpServer, server: LocalFtpServer
) -> None:
    """`passive` under the job would flip both; the advice names the one that failed."""
    server.block_passive()
    (tmp_path / "ftp.pass").write_text(ftp_server.password + "\n")
    text = f"""
{agent_table(tmp_path)}
{ftp_table("one", ftp_server, tmp_path / "ftp.pass")}
{ftp_table("two", server, tmp_path / "ftp.pass")}
[jobs.www]
destinations = ["one", "two"]
require = "any"
sources = ["{site}"]
"""
    (tmp_path / "jobs.toml").write_text(text)
    result = run_job(load_config(tmp_path / "jobs.toml"), "www")
    assert result.outcome == "warning", result.error
    assert "under [destinations.two], set passive = false" in (result.suggestion or "")
    assert "[jobs.www]" not in (result.suggestion or "")
