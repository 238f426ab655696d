"""The three FTP servers users really run, each with its shipped defaults: a backup in
passive and in active mode, explicit FTPS with TLS session reuse on the data
connections, and one firewall case that must end with the right, verified advice."""

from __future__ import annotations

import pytest

from backupagent.logging import read_events, run_logs

from .lab import Lab

pytestmark = pytest.mark.system

SERVERS = ["vsftpd", "proftpd", "pure-ftpd"]


def _events(lab: Lab, prefix: str) -> list[dict]:
    return [
        e
        for e in read_events(run_logs(lab.base / "log", "site")[-1])
        if e["event"].startswith(prefix)
    ]


def _one_complete_backup(lab: Lab) -> None:
    names = lab.remote_names()
    assert len([n for n in names if n.endswith(".manifest.json")]) == 1, names
    assert not [n for n in names if n.endswith(".partial")], names


@pytest.mark.parametrize("lab", [{"server": s} for s in SERVERS], indirect=True, ids=SERVERS)
@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_backup_in_each_mode(lab: Lab, passive: bool) -> None:
    result = lab.agent(lab.write_config(passive=passive), "run-job", "site")
    assert result.returncode == 0, result.stdout + result.stderr
    verbs = {e["event"].split(": ", 1)[1].split()[0] for e in _events(lab, "FTP client command")}
    assert ("EPSV" in verbs) is passive and ("PORT" in verbs) is not passive
    _one_complete_backup(lab)
    restored = lab.agent(lab.write_config(passive=passive), "verify", "site")
    assert restored.returncode == 0, restored.stdout + restored.stderr


@pytest.mark.parametrize(
    "lab", [{"server": s, "tls": True} for s in SERVERS], indirect=True, ids=SERVERS
)
def test_explicit_ftps_reuses_the_session(lab: Lab) -> None:
    tls = f'tls = "explicit"\ntls_ca_file = "{lab.tls["ca"]}"\ntls_max_version = "1.2"'
    result = lab.agent(lab.write_config(passive=True, dest=tls), "run-job", "site")
    assert result.returncode == 0, result.stdout + result.stderr
    data_tls = _events(lab, "FTP data connection: TLS")
    assert data_tls and all(e["reused"] for e in data_tls)
    assert _events(lab, "FTP client command: AUTH TLS")
    _one_complete_backup(lab)


@pytest.mark.parametrize(
    ("lab", "blocked", "passive", "category"),
    [
        ({"server": "proftpd"}, "passive", True, "passive_data_connection"),
        ({"server": "pure-ftpd"}, "active", False, "active_data_connection"),
    ],
    indirect=["lab"],
    ids=["proftpd-passive-blocked", "pure-ftpd-active-blocked"],
)
def test_firewall_gets_the_verified_flip(
    lab: Lab, blocked: str, passive: bool, category: str
) -> None:
    getattr(lab, f"block_{blocked}")()
    failed = lab.agent(lab.write_config(passive=passive), "run-job", "site")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    suggestion = _events(lab, "suggestion")[-1]
    assert suggestion["category"] == category, suggestion
    assert suggestion["change"] == f"passive = {str(not passive).lower()}"
    assert suggestion["verified"] is True
    assert not [n for n in lab.remote_names() if not n.endswith(".partial")]


@pytest.mark.parametrize(
    "lab", [{"server": s, "disk": "1M"} for s in SERVERS], indirect=True, ids=SERVERS
)
def test_full_disk_is_a_storage_verdict(lab: Lab) -> None:
    """The FTP home is a 1 MiB tmpfs; the archive (2 MB of random bytes) cannot fit."""
    failed = lab.agent(lab.write_config(passive=True), "run-job", "site")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    suggestion = _events(lab, "suggestion")[-1]
    assert suggestion["category"] == "server_out_of_space", suggestion
    assert suggestion["change"] is None and "set passive" not in failed.stdout
    assert len(_events(lab, "resuming upload")) <= 1
    assert not [n for n in lab.remote_names() if not n.endswith(".partial")]


@pytest.mark.parametrize(
    "lab", [{"server": s, "tls": True} for s in SERVERS], indirect=True, ids=SERVERS
)
def test_a_server_that_requires_tls_gets_tls_advice_not_password_advice(lab: Lab) -> None:
    failed = lab.agent(lab.write_config(passive=True), "run-job", "site")  # tls = "none"
    assert failed.returncode == 1, failed.stdout + failed.stderr
    suggestion = _events(lab, "suggestion")[-1]
    assert suggestion["category"] == "tls", suggestion
    assert 'Set tls = "explicit"' in failed.stdout and "set passive" not in failed.stdout
    assert not _events(lab, "FTP client command: PASS")  # refused at USER: never sent
