"""Real firewalls break one FTP mode; the agent says which setting to flip, verified.

vsftpd runs in a server namespace, the agent in a client namespace (see conftest).
"""

from __future__ import annotations

import json

import pytest

from backupagent.logging import read_events, run_logs

from .conftest import Lab

pytestmark = pytest.mark.system


def _last_suggestion(lab: Lab) -> dict:
    events = read_events(run_logs(lab.base / "log", "site")[-1])
    assert events[-1]["event"] == "suggestion", events[-1]
    return events[-1]


def _assert_nothing_published(lab: Lab) -> None:
    names = lab.remote_names()
    assert not [n for n in names if n.endswith((".tar.zst", ".manifest.json", ".partial"))], names


def test_blocked_active_mode_suggests_passive_verified(lab: Lab) -> None:
    lab.block_active()
    config = lab.write_config(passive=False)
    failed = lab.agent(config, "run-job", "site")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "set passive = true" in failed.stdout
    assert "Verified: a directory listing in passive mode worked from this host." in failed.stdout
    suggestion = _last_suggestion(lab)
    assert suggestion["category"] == "active_data_connection"
    assert suggestion["change"] == "passive = true" and suggestion["verified"] is True
    assert any(e.startswith("FTP client command: PORT ") for e in suggestion["evidence"])
    assert any(e.startswith("FTP server reply: 425") for e in suggestion["evidence"])
    _assert_nothing_published(lab)

    rerun = lab.agent(lab.write_config(passive=True), "run-job", "site")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    names = lab.remote_names()
    manifests = [n for n in names if n.endswith(".manifest.json")]
    assert len(manifests) == 1 and manifests[0].replace(".manifest.json", ".tar.zst") in names
    meta = json.loads((lab.ftp_root / "backups/site" / manifests[0]).read_text())
    archive = lab.ftp_root / "backups/site" / meta["files"][0]["name"]
    assert archive.stat().st_size == meta["files"][0]["size"]


def test_blocked_passive_mode_suggests_active_verified(lab: Lab) -> None:
    lab.block_passive()
    config = lab.write_config(passive=True)
    failed = lab.agent(config, "run-job", "site")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "set passive = false" in failed.stdout
    assert "Verified: a directory listing in active mode worked from this host." in failed.stdout
    suggestion = _last_suggestion(lab)
    assert suggestion["category"] == "passive_data_connection"
    assert any(e.startswith("FTP server reply: 227") for e in suggestion["evidence"])
    assert any("timed out after 4s" in e for e in suggestion["evidence"])
    _assert_nothing_published(lab)

    rerun = lab.agent(lab.write_config(passive=False), "run-job", "site")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len([n for n in lab.remote_names() if n.endswith(".manifest.json")]) == 1


def test_both_modes_blocked_points_at_the_firewall(lab: Lab) -> None:
    lab.block_active()
    lab.block_passive()
    failed = lab.agent(lab.write_config(passive=True), "run-job", "site")
    assert failed.returncode == 1
    assert "neither mode works" in failed.stdout
    assert "set passive" not in failed.stdout
    assert _last_suggestion(lab)["verified"] is False


def test_wrong_password_gives_credentials_advice_without_flip(lab: Lab) -> None:
    failed = lab.agent(
        lab.write_config(passive=True, password="not-the-password"), "run-job", "site"
    )
    assert failed.returncode == 1
    assert "FTP server reply: 530" in failed.stdout
    assert "set passive" not in failed.stdout
    suggestion = _last_suggestion(lab)
    assert suggestion["category"] == "login" and suggestion["change"] is None
    assert (
        "not-the-password"
        not in (lab.base / "log")
        .joinpath("site", run_logs(lab.base / "log", "site")[-1].name)
        .read_text()
    )
