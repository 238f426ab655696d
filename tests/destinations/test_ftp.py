"""FTP robustness against an in-process pyftpdlib server: EPSV/PASV, active options,
resume after a server restart, stalls, server-side checksums, FTPS, fallback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.config import Config, FtpDestination, load_config
from backupagent.destinations.ftp.diagnosis import FailureKind, diagnose, is_transient
from backupagent.destinations.ftp.dialogue import ControlConnectError, DataConnectionError
from backupagent.destinations.ftp.session import FtpSession
from backupagent.diagnosis import Category
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import read_events
from backupagent.outcome import RunResult

from ..conftest import WriteConfig
from ..helpers import make_certificates
from ..scripted import ScriptedFtp, ScriptedSession

REMOTE = Path("backups/site")


def point_at(config: Config, server: LocalFtpServer) -> Config:
    """The same jobs.toml, talking to another test server."""
    port = config.destinations["test"].port
    config.path.write_text(
        config.path.read_text().replace(f"port = {port}", f"port = {server.port}")
    )
    return load_config(config.path)


def commands(result: RunResult) -> list[str]:
    return [
        e["event"].removeprefix("FTP client command: ")
        for e in read_events(result.log_path)
        if e["event"].startswith("FTP client command: ")
    ]


def events(result: RunResult, prefix: str) -> list[dict]:
    return [e for e in read_events(result.log_path) if e["event"].startswith(prefix)]


def published(server: LocalFtpServer) -> list[str]:
    d = server.root / REMOTE
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize("server", [{"refuse_epsv": True}], indirect=True)
def test_epsv_auto_falls_back_to_pasv(write_config: WriteConfig, server: LocalFtpServer) -> None:
    result = run_job(point_at(write_config(), server), "www")
    assert result.outcome == "success", result.error
    sent = commands(result)
    assert sent.count("EPSV") == 1  # learned once per session, then PASV
    assert "PASV" in sent
    assert events(result, "FTP server refused EPSV")


@pytest.mark.parametrize("server", [{"masquerade_address": "10.99.0.7"}], indirect=True)
def test_pasv_with_private_address_uses_the_control_address(
    write_config: WriteConfig, server: LocalFtpServer
) -> None:
    result = run_job(point_at(write_config(dest="epsv = false"), server), "www")
    assert result.outcome == "success", result.error
    warning = events(result, "FTP server's passive reply names a private")[0]
    assert (warning["advertised"], warning["control"]) == ("10.99.0.7", "127.0.0.1")
    assert "EPSV" not in commands(result)


def test_active_ports_range(write_config: WriteConfig, ftp_server: LocalFtpServer) -> None:
    result = run_job(
        write_config(job="passive = false", dest='active_ports = "50100-50110"'), "www"
    )
    assert result.outcome == "success", result.error
    ports = [c for c in commands(result) if c.startswith("PORT ")]
    assert ports
    for command in ports:
        p1, p2 = map(int, command.split(",")[-2:])
        assert 50100 <= p1 * 256 + p2 <= 50110


@pytest.mark.parametrize("server", [{"permit_foreign_addresses": True}], indirect=True)
def test_active_address_is_advertised(write_config: WriteConfig, server: LocalFtpServer) -> None:
    config = point_at(
        write_config(job="passive = false", dest='active_address = "127.0.0.2"'), server
    )
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    assert any(c.startswith("PORT 127,0,0,2,") for c in commands(result))


@pytest.mark.parametrize(
    ("volume_size", "cut_in"),
    [("64M", ".tar.zst.0001.partial"), ("1M", ".tar.zst.0002.partial")],
    ids=["one volume", "second of four volumes"],
)
def test_resume_after_the_server_restarts_mid_upload(
    write_config: WriteConfig, tmp_path: Path, site: Path, volume_size: str, cut_in: str
) -> None:
    (site / "big.bin").write_bytes(os.urandom(4_000_000))
    root = tmp_path / "restart-root"
    root.mkdir()
    first = LocalFtpServer(root, throttle=400_000).start()
    config = point_at(
        write_config(job=f'volume_size = "{volume_size}"', dest="retry_wait = 0.2\nretries = 20"),
        first,
    )
    outcome: dict[str, RunResult] = {}
    runner = threading.Thread(target=lambda: outcome.update(r=run_job(config, "www")))
    runner.start()
    deadline = time.monotonic() + 30
    partial = None
    while partial is None or partial.stat().st_size < 500_000:  # bounded: see deadline
        assert time.monotonic() < deadline, "the upload did not get going"
        partial = next(root.rglob(f"*{cut_in}"), None)
        time.sleep(0.02)
    first.stop()  # the server goes away mid-upload
    second = LocalFtpServer(root, port=first.port).start()
    try:
        runner.join(timeout=120)
    finally:
        second.stop()
    result = outcome["r"]
    assert result.outcome == "success", (result.error, result.suggestion)
    resumed = events(result, "resuming upload")
    assert resumed and resumed[0]["offset"] > 0 and resumed[0]["method"] == "REST + STOR"
    assert [e["name"] for e in resumed] == [f"{result.backup_id}{cut_in}"]
    assert events(result, "FTP upload of")  # the retry is logged with its reason
    manifest = json.loads((root / REMOTE / f"{result.backup_id}.manifest.json").read_text())
    for volume in manifest["files"]:
        data = (root / REMOTE / volume["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == volume["sha256"]
    joined = b"".join((root / REMOTE / v["name"]).read_bytes() for v in manifest["files"])
    assert len(joined) == manifest["archive"]["size"]


def test_server_that_stops_reading_fails_within_the_bound(
    write_config: WriteConfig, tmp_path: Path, site: Path
) -> None:
    (site / "big.bin").write_bytes(os.urandom(12_000_000))
    root = tmp_path / "stall-root"
    root.mkdir()
    with LocalFtpServer(root, throttle=1) as stalled:
        config = write_config(dest="retries = 1\nretry_wait = 0.1")
        config.path.write_text(config.path.read_text().replace("timeout = 5", "timeout = 1"))
        config = point_at(config, stalled)
        started = time.monotonic()
        result = run_job(config, "www")
        took = time.monotonic() - started
    assert result.exit_code == 1
    assert took < 20
    assert "the data connection broke during the transfer" in result.error
    assert "timed out after 1s" in result.suggestion
    assert len(events(result, "FTP upload of")) == 1  # one retry, then it gave up
    assert not [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("server", "algorithm"),
    [
        ({"checksum": "XSHA256"}, "sha256"),
        ({"checksum": "XMD5"}, "md5"),
        ({"checksum": "HASH"}, "sha256"),
    ],
    indirect=["server"],
)
def test_server_checksum_is_verified(
    write_config: WriteConfig, server: LocalFtpServer, algorithm: str
) -> None:
    result = run_job(point_at(write_config(), server), "www")
    assert result.outcome == "success", result.error
    assert events(result, "checksum verified by the server")[0]["algorithm"] == algorithm


@pytest.mark.parametrize("server", [{"checksum": "XSHA256", "checksum_lies": True}], indirect=True)
def test_checksum_mismatch_publishes_nothing(
    write_config: WriteConfig, server: LocalFtpServer
) -> None:
    result = run_job(point_at(write_config(), server), "www")
    assert result.exit_code == 1
    assert "checksum mismatch" in result.error
    assert published(server) == []


def test_fallback_succeeds_in_the_other_mode_and_says_so(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    ftp_server.block_passive()
    result = run_job(write_config(job="fallback = true"), "www")
    assert result.outcome == "warning", result.error
    assert result.exit_code == 0
    assert "set passive = false under [jobs.www]" in result.suggestion
    assert any("active mode worked (fallback)" in w for w in result.warnings)
    assert len([n for n in published(ftp_server) if n.endswith(".manifest.json")]) == 1


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    pytest.importorskip("OpenSSL", reason="pyOpenSSL is needed for pyftpdlib's FTPS")
    return make_certificates(tmp_path)


@pytest.fixture
def tls_server(tmp_path: Path, tls_files: dict[str, Path]):
    root = tmp_path / "tls-root"
    root.mkdir()
    with LocalFtpServer(root, tls_cert=(tls_files["cert"], tls_files["key"])) as srv:
        yield srv


def test_explicit_ftps_with_the_ca_file(
    write_config: WriteConfig, tls_server: LocalFtpServer, tls_files: dict[str, Path]
) -> None:
    config = point_at(
        write_config(dest=f'tls = "explicit"\ntls_ca_file = "{tls_files["ca"]}"'), tls_server
    )
    result = run_job(config, "www")
    assert result.outcome == "success", (result.error, result.suggestion)
    sent = commands(result)
    assert sent[:1] == ["AUTH TLS"] and "PBSZ 0" in sent and "PROT P" in sent
    assert sent.index("AUTH TLS") < sent.index("PASS ****")


def test_pinned_fingerprint(
    write_config: WriteConfig,
    tls_server: LocalFtpServer,
    tls_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    pin = (tmp_path / "fingerprint").read_text()
    good = point_at(write_config(dest=f'tls = "explicit"\ntls_fingerprint = "{pin}"'), tls_server)
    assert run_job(good, "www").outcome == "success"
    wrong = "0" * 64
    bad = point_at(write_config(dest=f'tls = "explicit"\ntls_fingerprint = "{wrong}"'), tls_server)
    result = run_job(bad, "www")
    assert result.exit_code == 1
    assert "fingerprint mismatch" in result.suggestion
    assert "PASS ****" not in commands(result)  # no password sent to an unverified server
    assert read_events(result.log_path)[-1]["category"] == "tls"


def test_unverifiable_certificate_is_a_tls_failure(
    write_config: WriteConfig, tls_server: LocalFtpServer
) -> None:
    result = run_job(point_at(write_config(dest='tls = "explicit"'), tls_server), "www")
    assert result.exit_code == 1
    assert read_events(result.log_path)[-1]["category"] == "tls"
    assert "certificate verify failed" in result.suggestion
    assert "set passive" not in result.suggestion


def test_tls_verify_false_warns_loudly(
    write_config: WriteConfig, tls_server: LocalFtpServer
) -> None:
    config = point_at(write_config(dest='tls = "explicit"\ntls_verify = false'), tls_server)
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    assert events(result, "TLS CERTIFICATE NOT VERIFIED")


def test_control_connection_has_keepalive(write_config: WriteConfig) -> None:
    import socket

    from backupagent.destinations.ftp.session import FtpSession

    config = write_config()
    with FtpSession(config.destination_of("www"), True) as session:
        sock = session.ftp.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert sock.gettimeout() == config.destination_of("www").timeout


def test_local_read_error_is_not_a_network_error(write_config: WriteConfig) -> None:
    import io as _io

    from backupagent.destinations.ftp.dialogue import LocalReadError
    from backupagent.destinations.ftp.session import FtpSession

    class Broken(_io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise OSError(5, "Input/output error")

    config = write_config()
    with FtpSession(config.destination_of("www"), True) as session, pytest.raises(LocalReadError):
        session.upload(Broken(), "x.partial")


# --- failures that must get the right verdict --------------------------------------


def _scripted_dest(server: ScriptedFtp, **settings: object) -> FtpDestination:
    return FtpDestination.model_validate(
        {"type": "ftp", "host": "127.0.0.1", "port": server.port, "password": "x", **settings}
    )


def _connect_back_then_hang(session: ScriptedSession, _arg: str) -> None:
    """Connect to the address the client gave in PORT, then answer nothing."""
    port_line = next(c for c in reversed(session.commands) if c.startswith("PORT "))
    numbers = [int(n) for n in port_line.split(" ", 1)[1].split(",")]
    data = socket.create_connection(
        (".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5])
    )
    session.data = data  # type: ignore[attr-defined]  # kept open until the test ends
    return None


@pytest.mark.parametrize(
    ("silent_at", "script"),
    [
        # vsftpd, ProFTPD: connect on STOR, answer 150 after, or 425 after their own
        # (longer) connect timeout: the client's timeout ends first
        ("STOR", {"STOR": None}),
        # pyftpdlib, IIS: connect on PORT, answer after
        ("PORT", {"PORT": None}),
    ],
)
def test_active_server_that_never_connects_back_is_a_data_connection_failure(
    silent_at: str, script: dict
) -> None:
    # timeout = 1: a server that never answers gives this outcome at any timeout
    with (
        ScriptedFtp(script) as server,
        FtpSession(_scripted_dest(server, timeout=1), passive=False) as session,
    ):
        with pytest.raises(DataConnectionError) as caught:
            session.upload(io.BytesIO(b"data"), "a.partial")
        failure = session.failure(caught.value)
    # a reply timed out: the session is out of step, nothing more is sent on it (vsftpd
    # would answer QUIT only once its own connect timeout ended, 60 s later)
    assert server.commands()[-1].startswith(silent_at)
    diagnosis = diagnose(failure)
    assert failure.kind is FailureKind.DATA_CONNECT and failure.address
    assert diagnosis.category is Category.ACTIVE_DATA and diagnosis.passive_should_be is True
    assert not is_transient(failure)
    assert any(line.startswith(f"FTP client command: {silent_at}") for line in diagnosis.evidence)
    # once STOR is sent the server may have created the file (vsftpd does): clean-up needed
    assert ("a.partial" in session.touched) is (silent_at == "STOR")


def test_active_server_that_connects_but_never_answers_is_not_blamed_on_the_mode() -> None:
    # timeout = 1: the server stays silent for ever; only the cause is asserted
    with ScriptedFtp({"STOR": _connect_back_then_hang}) as server:
        session = FtpSession(_scripted_dest(server, timeout=1), passive=False)
        with pytest.raises(TimeoutError), session:
            session.upload(io.BytesIO(b"data"), "a.partial")


def test_a_port_that_accepts_but_never_greets_is_told_apart_from_a_dead_host() -> None:
    # connect_timeout = 1: the server never greets, any timeout gives this outcome
    with ScriptedFtp(banner=None) as server:
        session = FtpSession(_scripted_dest(server, connect_timeout=1), passive=True)
        with pytest.raises(ControlConnectError) as caught:
            session.open()
        failure = session.failure(caught.value)
        session.close()
    diagnosis = diagnose(failure)
    assert diagnosis.category is Category.HOST and diagnosis.keys == ("port", "tls")
    assert "accepted the connection but sent no greeting" in diagnosis.what
    assert "no greeting within 1s" in diagnosis.evidence[0]


def test_wrong_password_is_one_login_and_no_work(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    import sqlite3

    db = tmp_path / "app.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    result = run_job(
        write_config(password="wrong", job=f'databases = [{{ type = "sqlite", path = "{db}" }}]'),
        "www",
    )
    assert result.exit_code == 1 and "530" in result.suggestion
    names = [e["event"] for e in read_events(result.log_path)]
    assert names.count("FTP client command: PASS ****") == 1
    assert "archive written" not in names and "removing incomplete upload" not in names
    assert not any("dump" in n for n in names)
    assert not list((tmp_path / "spool" / "www").iterdir())


def test_server_down_fails_fast_without_a_clean_up(write_config: WriteConfig) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
    config = write_config()
    config.path.write_text(config.path.read_text().replace("port = ", f"port = {port}\n#"))
    result = run_job(load_config(config.path), "www")
    assert result.exit_code == 1
    assert read_events(result.log_path)[-1]["category"] == "host_unreachable"
    assert len(events(result, "FTP login failed; retrying")) == 1  # once, not `retries` times
    assert not events(result, "removing incomplete upload")
    assert not events(result, "could not remove")


def test_missing_directory_fails_before_any_work(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    (ftp_server.root / "backups").write_text("a file where the directory should be")
    result = run_job(write_config(), "www")
    assert result.exit_code == 1
    assert read_events(result.log_path)[-1]["category"] == "path_or_permission"
    assert "archive written" not in [e["event"] for e in read_events(result.log_path)]


@pytest.mark.parametrize("server", [{"disk_limit": 120_000}], indirect=True)
def test_full_server_disk_is_diagnosed_after_one_resume(
    write_config: WriteConfig, server: LocalFtpServer
) -> None:
    result = run_job(point_at(write_config(), server), "www")  # ~300 kB archive
    assert result.exit_code == 1
    last = read_events(result.log_path)[-1]
    assert last["category"] == "server_out_of_space" and last["change"] is None
    assert len(events(result, "resuming upload")) == 1
    assert any("bytes and took none more" in e for e in last["evidence"])
    assert any("451 Failure writing to local file." in e for e in last["evidence"])
    assert "set passive" not in result.suggestion and "keep" in result.suggestion
    assert published(server) == []  # the partial volume was removed


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        # vsftpd after a restart: the session process is gone
        ({"faults": {"RNFR": ["500 OOPS: priv_sock_send_cmd"]}}, "500 OOPS: priv_sock_send_cmd"),
        ({"faults": {"RNFR": ["421 Service not available."]}}, "421 Service not available."),
        # answered, then the connection closed: the next command finds it gone
        ({"faults": {"RNFR": ["close-after"]}}, "closed"),
    ],
    indirect=["server"],
    ids=["oops", "421", "closed-after-reply"],
)
def test_a_lost_session_is_reconnected_and_the_step_retried(
    write_config: WriteConfig, server: LocalFtpServer, reason: str
) -> None:
    result = run_job(point_at(write_config(dest="retry_wait = 0.1"), server), "www")
    assert result.outcome == "success", result.suggestion
    reasons = [e["reason"] for e in events(result, "FTP rename failed; retrying")]
    if reason == "closed":  # the next command meets an EOF or a reset: the kernel decides
        assert reasons in (["the server closed the connection"], ["connection reset by peer"])
    else:
        assert reasons == [reason]
    assert len([n for n in published(server) if n.endswith(".manifest.json")]) == 1


@pytest.mark.parametrize("server", [{"faults": {"RNTO": ["no-reply"]}}], indirect=True)
def test_a_rename_whose_reply_was_lost_is_not_repeated(
    write_config: WriteConfig, server: LocalFtpServer
) -> None:
    result = run_job(point_at(write_config(dest="retry_wait = 0.1"), server), "www")
    assert result.outcome == "success", result.suggestion
    assert events(result, "rename already done")
    assert len([n for n in published(server) if n.endswith(".manifest.json")]) == 1


@pytest.mark.parametrize(
    "server",
    [
        {
            "faults": {
                "PASS": ["500 OOPS: vsftpd: refusing to run with writable root inside chroot()"] * 9
            }
        }
    ],
    indirect=True,
)
def test_an_oops_on_every_attempt_is_the_server_admins_to_fix(
    write_config: WriteConfig, server: LocalFtpServer
) -> None:
    result = run_job(point_at(write_config(dest="retry_wait = 0.1"), server), "www")
    assert result.exit_code == 1
    last = read_events(result.log_path)[-1]
    assert last["category"] == "server_error" and last["change"] is None
    assert "refusing to run with writable root" in result.suggestion
    assert "server's admin" in result.suggestion


def test_certificate_failure_shows_what_to_pin(
    write_config: WriteConfig, tls_server: LocalFtpServer, tmp_path: Path
) -> None:
    fingerprint = (tmp_path / "fingerprint").read_text()
    result = run_job(point_at(write_config(dest='tls = "explicit"'), tls_server), "www")
    assert result.exit_code == 1
    text = result.suggestion
    assert f'tls_fingerprint = "{fingerprint}"' in text
    assert "certificate subject: CN=127.0.0.1" in text
    assert "issuer: CN=backupagent test CA" in text and "valid until: 20" in text
    assert "tls_ca_file" in text and "set passive" not in text
    assert "PASS ****" not in commands(result)


# --- one login for a quick run ---------------------------------------------------------


def test_a_quick_run_logs_in_once(write_config: WriteConfig) -> None:
    """The login check's session carries the run (vsftpd's PAM login costs ~45 ms)."""
    result = run_job(write_config(), "www")
    assert result.outcome == "success", result.error
    sent = commands(result)
    assert sum(c.startswith("USER ") for c in sent) == 1, sent
    assert sent.count("QUIT") == 1


def test_a_session_idle_longer_than_reuse_idle_is_replaced(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a long dump, the checked session is not trusted: a fresh one is opened."""
    from backupagent.destinations.ftp import remote as remote_module

    config = write_config()
    remote = remote_module.FtpRemote(config.destinations["test"], passive=True)
    remote.check()
    first = remote.session
    monkeypatch.setattr(remote_module, "REUSE_IDLE", -1.0)  # as if REUSE_IDLE had passed
    remote.call("listing", lambda session, _attempt: session.features())
    assert remote.session is not None and remote.session is not first
    assert first is not None and first.ftp.sock is None  # the old one was closed
    assert [line.verb for line in first.dialogue if line.direction == "command"][-1] == "QUIT"
    remote.close()
