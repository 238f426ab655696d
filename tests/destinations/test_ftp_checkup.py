"""`backupagent diagnose`: which modes work, and the settings it recommends."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupagent.destinations.ftp.checkup import Outcome, recommend
from backupagent.ftpserver import LocalFtpServer

from ..conftest import WriteConfig
from ..helpers import cli
from .test_ftp import point_at


def _modes(epsv: bool, pasv: bool, active: bool, epsv_refused: bool = False) -> dict[str, Outcome]:
    return {
        "EPSV": Outcome("EPSV", epsv, 0.1, "", refused=epsv_refused),
        "PASV": Outcome("PASV", pasv, 0.1, ""),
        "active": Outcome("active", active, 0.1, ""),
    }


@pytest.mark.parametrize(
    ("modes", "passive", "epsv", "works", "changes"),
    [
        (_modes(True, True, True), True, "auto", True, []),
        (_modes(False, False, True), True, "auto", False, [("job", "passive = false")]),
        (_modes(True, True, False), False, "auto", False, [("job", "passive = true")]),
        (_modes(False, True, True, epsv_refused=True), True, "auto", True, []),
        # an EPSV data connection that fails is not "refused": auto would not try PASV
        (
            _modes(False, True, True),
            True,
            "auto",
            False,
            [("job", "passive = true"), ("destination", "epsv = false")],
        ),
        (_modes(True, True, True), True, False, True, []),
        (
            _modes(True, False, True),
            True,
            False,
            False,
            [("job", "passive = true"), ("destination", 'epsv = "auto"')],
        ),
        (_modes(False, False, False), True, "auto", False, []),
    ],
)
def test_recommend(modes, passive, epsv, works, changes) -> None:
    assert recommend(modes, passive, epsv) == (works, changes)


def test_diagnose_blocked_passive(write_config: WriteConfig, ftp_server: LocalFtpServer) -> None:
    config = write_config()
    ftp_server.block_passive()
    result = cli(config.path, "diagnose", "www")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {
        line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines() if "\t" in line
    }
    assert (
        rows["EPSV"][1] == "fails" and rows["PASV"][1] == "fails" and rows["active"][1] == "works"
    )
    assert "connection refused" in rows["EPSV"][3]
    assert "under [jobs.www] set passive = false" in result.stdout
    assert "220 backupagent test FTP server ready." in result.stdout
    assert not [p for p in (ftp_server.root).rglob(".backupagent-diagnose-*")]
    log = next((config.agent.log_dir / "diagnose" / "www").glob("*.jsonl")).read_text()
    assert "FTP client command: EPSV" in log and "FTP client command: PASS ****" in log


@pytest.mark.parametrize("server", [{"refuse_epsv": True}], indirect=True)
def test_diagnose_server_without_epsv(write_config: WriteConfig, server: LocalFtpServer) -> None:
    config = point_at(write_config(), server)
    result = cli(config.path, "diagnose", "www")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "500 Command not understood." in result.stdout
    assert "works; no change needed" in result.stdout


def test_diagnose_wrong_password(write_config: WriteConfig) -> None:
    result = cli(write_config(password="nope").path, "diagnose", "www")
    assert result.returncode == 1
    assert "FAIL connect and log in" in result.stdout and "530" in result.stdout


def test_diagnose_names_the_destination_and_shows_progress(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    result = cli(write_config().path, "diagnose", "www")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Destination 'test' -> ")
    assert "as used by job 'www'" in result.stdout.splitlines()[0]
    steps = [line for line in result.stderr.splitlines() if line.startswith("  ... trying ")]
    assert [line.split()[2].rstrip(":") for line in steps] == ["EPSV", "PASV", "active"]
    assert "a blocked mode takes 15s" in steps[0] and "a blocked mode takes 5s" in steps[2]


def test_diagnose_shows_the_certificate_it_could_not_verify(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    pytest.importorskip("OpenSSL", reason="pyOpenSSL is needed for pyftpdlib's FTPS")
    from ..helpers import make_certificates

    files = make_certificates(tmp_path)
    fingerprint = (tmp_path / "fingerprint").read_text()
    root = tmp_path / "tls-root"
    root.mkdir()
    with LocalFtpServer(root, tls_cert=(files["cert"], files["key"])) as server:
        refused = cli(
            point_at(write_config(dest='tls = "explicit"'), server).path, "diagnose", "www"
        )
        pinned = cli(
            point_at(
                write_config(dest=f'tls = "explicit"\ntls_fingerprint = "{fingerprint}"'), server
            ).path,
            "diagnose",
            "www",
        )
    assert refused.returncode == 1
    assert "TLS certificate (NOT ACCEPTED):" in refused.stdout
    assert f"SHA-256:     {fingerprint}" in refused.stdout
    assert "issuer:      CN=backupagent test CA" in refused.stdout
    assert f'tls_fingerprint = "{fingerprint}"' in refused.stdout
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert "TLS certificate (pinned by tls_fingerprint):" in pinned.stdout
    assert "subject:     CN=127.0.0.1" in pinned.stdout
