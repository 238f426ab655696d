"""FTP that survives real networks, against vsftpd across network namespaces:
FTPS with require_ssl_reuse, a server killed and restarted mid-upload, a server that
stops reading, fallback through a real firewall, and diagnose in both set-ups."""

from __future__ import annotations

import hashlib
import json
import signal
import time

import pytest

from backupagent.logging import read_events, run_logs

from .lab import Lab

pytestmark = pytest.mark.system


def _events(lab: Lab, prefix: str) -> list[dict]:
    return [
        e
        for e in read_events(run_logs(lab.base / "log", "site")[-1])
        if e["event"].startswith(prefix)
    ]


def _the_backup_is_intact(lab: Lab) -> None:
    folder = lab.ftp_root / "backups" / "site"
    manifests = sorted(folder.glob("*.manifest.json"))
    assert len(manifests) == 1, sorted(p.name for p in folder.iterdir())
    meta = json.loads(manifests[0].read_text())
    archive = folder / meta["files"][0]["name"]
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == meta["files"][0]["sha256"]
    assert not list(folder.glob("*.partial"))


@pytest.mark.parametrize("lab", [{"tls": True}], indirect=True)
@pytest.mark.parametrize("passive", [True, False])
def test_ftps_with_session_reuse(lab: Lab, passive: bool) -> None:
    tls = f'tls = "explicit"\ntls_ca_file = "{lab.tls["ca"]}"\ntls_max_version = "1.2"'
    result = lab.agent(lab.write_config(passive=passive, dest=tls), "run-job", "site")
    assert result.returncode == 0, result.stdout + result.stderr
    data_tls = _events(lab, "FTP data connection: TLS")
    assert data_tls and all(e["reused"] for e in data_tls)
    _the_backup_is_intact(lab)


@pytest.mark.parametrize("lab", [{"tls": True, "implicit": True}], indirect=True)
def test_implicit_ftps(lab: Lab) -> None:
    tls = f'tls = "implicit"\nport = 21\ntls_ca_file = "{lab.tls["ca"]}"\ntls_max_version = "1.2"'
    result = lab.agent(lab.write_config(passive=True, dest=tls), "run-job", "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [e for e in _events(lab, "FTP client command: AUTH")]  # TLS from the first byte
    _the_backup_is_intact(lab)


@pytest.mark.parametrize(
    ("lab", "tls"),
    [
        ({"tls": True}, 'tls = "explicit"'),
        ({"tls": True, "implicit": True}, 'tls = "implicit"\nport = 21'),
    ],
    indirect=["lab"],
    ids=["explicit", "implicit"],
)
def test_ftps_without_the_ca_is_a_tls_problem_with_the_pin_to_set(lab: Lab, tls: str) -> None:
    result = lab.agent(lab.write_config(passive=True, dest=tls), "run-job", "site")
    assert result.returncode == 1
    assert "certificate verify failed" in result.stdout
    assert "set passive" not in result.stdout
    fingerprint = (lab.base / "fingerprint").read_text()
    assert f'tls_fingerprint = "{fingerprint}"' in result.stdout
    assert "issuer: CN=backupagent test CA" in result.stdout
    assert _events(lab, "suggestion")[0]["category"] == "tls"
    assert not _events(lab, "FTP client command: PASS")  # never sent to an unverified server
    pinned = lab.agent(
        lab.write_config(passive=True, dest=f'{tls}\ntls_fingerprint = "{fingerprint}"'),
        "run-job",
        "site",
    )
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr


@pytest.mark.parametrize(
    ("lab", "method"),
    [
        ({"max_rate": 400_000}, "REST + STOR"),
        # ProFTPD refuses REST before STOR by default (AllowStoreRestart off): start over
        ({"max_rate": 400_000, "server": "proftpd"}, None),
    ],
    indirect=["lab"],
    ids=["vsftpd", "proftpd"],
)
def test_server_killed_mid_upload_and_restarted_resumes(lab: Lab, method: str | None) -> None:
    config = lab.write_config(passive=True, dest="retry_wait = 0.5\nretries = 20")
    agent = lab.agent_background(config, "run-job", "site")
    deadline = time.monotonic() + 30
    while True:  # bounded wait until a good part of the archive is on the server
        partial = (
            next((lab.ftp_root / "backups" / "site").glob("*.partial"), None)
            if (lab.ftp_root / "backups" / "site").exists()
            else None
        )
        if partial is not None and partial.stat().st_size > 500_000:
            break
        assert time.monotonic() < deadline and agent.poll() is None, agent.communicate()
        time.sleep(0.05)
    lab.kill_server()
    lab.start_server()
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, out + err
    resumed = _events(lab, "resuming upload")
    assert resumed and resumed[0]["offset"] > 500_000
    if method:
        assert resumed[0]["method"] == method
    else:
        assert _events(lab, "the server refused to resume the upload")
    _the_backup_is_intact(lab)


@pytest.mark.parametrize("lab", [{"max_rate": 400_000}], indirect=True)
def test_server_that_stops_reading_fails_within_the_bound(lab: Lab) -> None:
    # shortened timeouts: a stopped server stays silent, so no timeout changes the outcome
    config = lab.write_config(
        passive=True,
        dest="retries = 2\nretry_wait = 0.5\nfinal_reply_timeout = 5\ntimeout = 4\nconnect_timeout = 3",
    )
    agent = lab.agent_background(config, "run-job", "site")
    deadline = time.monotonic() + 30
    while not (lab.ftp_root / "backups" / "site").exists() or not list(
        (lab.ftp_root / "backups" / "site").glob("*.partial")
    ):
        assert time.monotonic() < deadline and agent.poll() is None
        time.sleep(0.02)
    lab.signal_server(signal.SIGSTOP)  # alive but silent: reads nothing, answers nothing
    stopped = time.monotonic()
    out, err = agent.communicate(timeout=120)
    took = time.monotonic() - stopped
    lab.signal_server(signal.SIGCONT)
    assert agent.returncode == 1, out + err
    # three attempts of at most timeout (4 s) + connect_timeout (3 s), plus the waits
    assert took < 30
    # the stopped server's kernel still accepts connections: the retries meet no greeting
    assert "timed out after" in out or "no greeting within 3s" in out
    assert len(_events(lab, "FTP upload of")) + len(_events(lab, "FTP clean-up")) >= 1


def test_fallback_through_a_real_firewall(lab: Lab) -> None:
    lab.block_active()
    result = lab.agent(lab.write_config(passive=False, job="fallback = true"), "run-job", "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passive mode worked (fallback)" in result.stdout
    assert "set passive = true under [jobs.site]" in result.stdout
    _the_backup_is_intact(lab)


@pytest.mark.parametrize(
    ("block", "passive", "exit_code", "expect"),
    [
        ("active", True, 0, {"EPSV": "works", "PASV": "works", "active": "fails"}),
        ("passive", True, 1, {"EPSV": "fails", "PASV": "fails", "active": "works"}),
    ],
)
def test_diagnose_in_both_firewall_set_ups(
    lab: Lab, block: str, passive: bool, exit_code: int, expect: dict[str, str]
) -> None:
    getattr(lab, f"block_{block}")()
    result = lab.agent(lab.write_config(passive=passive), "diagnose", "site")
    assert result.returncode == exit_code, result.stdout + result.stderr
    rows = {
        line.split()[0]: line.split()[1]
        for line in result.stdout.splitlines()
        if line.split() and line.split()[0] in ("EPSV", "PASV", "active")
    }
    assert rows == expect
    if exit_code:
        assert "under [jobs.site] set passive = false" in result.stdout
    else:
        assert "works; no change needed" in result.stdout
