"""Real firewalls break one FTP mode; the agent says which setting to flip, verified.

vsftpd runs in a server namespace, the agent in a client namespace (see conftest).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupagent.logging import read_events, run_logs

from ..sshd import SSHD
from .lab import SERVER_ADDR, Lab

pytestmark = pytest.mark.system


def _last_suggestion(lab: Lab) -> dict:
    events = read_events(run_logs(lab.base / "log", "site")[-1])
    assert events[-1]["event"] == "suggestion", events[-1]
    return events[-1]


def _assert_nothing_published(lab: Lab) -> None:
    names = lab.remote_names()
    assert not [n for n in names if n.endswith((".tar.zst", ".manifest.json", ".partial"))], names


def _assert_one_complete_backup(lab: Lab) -> None:
    names = lab.remote_names()
    manifests = [n for n in names if n.endswith(".manifest.json")]
    assert len(manifests) == 1, names
    meta = json.loads((lab.ftp_root / "backups/site" / manifests[0]).read_text())
    archive = lab.ftp_root / "backups/site" / meta["files"][0]["name"]
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == meta["files"][0]["sha256"]


@pytest.mark.parametrize(
    ("blocked", "passive", "category", "evidence"),
    [
        # the client drops inbound SYNs: vsftpd cannot connect back for PORT; it would
        # answer 425 after its connect_timeout (60 s), the agent's timeout (30 s) ends first
        (
            "active",
            False,
            "active_data_connection",
            ("FTP client command: PORT ", "data connection to 10.231.7.1:"),
        ),
        # the server drops its passive port range: connecting to the 229 port times out
        (
            "passive",
            True,
            "passive_data_connection",
            ("FTP server reply: 229", "data connection to 10.231.7.2:"),
        ),
    ],
)
def test_blocked_mode_suggests_the_other_verified_and_rerun_succeeds(
    lab: Lab, blocked: str, passive: bool, category: str, evidence: tuple[str, ...]
) -> None:
    getattr(lab, f"block_{blocked}")()
    failed = lab.agent(lab.write_config(passive=passive), "run-job", "site")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    other = "active" if passive else "passive"
    flip = f"passive = {str(not passive).lower()}"
    assert f"set {flip}" in failed.stdout
    assert f"Verified: a directory listing in {other} mode worked from this host." in failed.stdout
    suggestion = _last_suggestion(lab)
    assert suggestion["category"] == category
    assert suggestion["change"] == flip and suggestion["verified"] is True
    for marker in evidence:
        assert any(e.startswith(marker) for e in suggestion["evidence"]), suggestion["evidence"]
    _assert_nothing_published(lab)

    rerun = lab.agent(lab.write_config(passive=not passive), "run-job", "site")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    _assert_one_complete_backup(lab)


def test_both_modes_blocked_points_at_the_firewall(lab: Lab) -> None:
    lab.block_active()
    lab.block_passive()
    failed = lab.agent(lab.write_config(passive=True), "run-job", "site")
    assert failed.returncode == 1
    assert "neither mode works" in failed.stdout
    assert "set passive" not in failed.stdout
    assert _last_suggestion(lab)["verified"] is False


def test_both_modes_blocked_on_a_host_that_answers_ssh_suggests_sftp(
    lab: Lab, tmp_path: Path
) -> None:
    """The FTP server's host runs sshd on port 22 as well: SFTP needs no data connection."""
    lab.block_active()
    lab.block_passive()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")],
        check=True,
    )
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port 22\nListenAddress {SERVER_ADDR}\nHostKey {tmp_path}/host_key\n"
        f"PidFile {tmp_path}/sshd.pid\nPasswordAuthentication no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = subprocess.Popen(
        ["ip", "netns", "exec", lab.server_ns, SSHD, "-D", "-e", "-f", str(config)],
        stderr=subprocess.DEVNULL,
    )
    try:
        greet = f"import socket; socket.create_connection(('{SERVER_ADDR}', 22), 1).recv(4)"
        deadline = time.monotonic() + 20
        while lab.client(sys.executable, "-c", greet).returncode != 0:
            assert time.monotonic() < deadline, "sshd did not start in the server namespace"
        failed = lab.agent(lab.write_config(passive=True), "run-job", "site")
        assert failed.returncode == 1
        assert "neither mode works" in failed.stdout
        assert 'type = "sftp"' in failed.stdout
    finally:
        sshd.kill()
        sshd.wait()


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


def test_active_address_the_server_cannot_reach_gets_the_flip(lab: Lab) -> None:
    """Behind NAT, PORT names another address than the one the server sees (vsftpd
    refuses it: `500 Illegal PORT command.`): an active data-connection failure, with
    the passive listing tried before the flip is suggested."""
    failed = lab.agent(
        lab.write_config(passive=False, dest='active_address = "10.231.7.3"'), "run-job", "site"
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    suggestion = _last_suggestion(lab)
    assert suggestion["category"] == "active_data_connection"
    assert suggestion["change"] == "passive = true" and suggestion["verified"] is True
    assert any(e.startswith("FTP client command: PORT 10,231,7,3,") for e in suggestion["evidence"])
    _assert_nothing_published(lab)
