"""Mail, pings and metrics against real local servers (aiosmtpd, http.server)."""

from __future__ import annotations

import email
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from backupagent.actions.backup import run_job
from backupagent.actions.drill import drill
from backupagent.actions.verify import verify
from backupagent.config import load_config
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import read_events
from backupagent.state import History

from .conftest import WriteConfig
from .helpers import cli


@pytest.fixture
def smtp() -> Iterator[tuple[int, list]]:
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = controller_mod.Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def _with_mail(config, port: int, on: str = '["failure", "warning"]') -> None:
    """Set (or replace) an [agent.email] table at the end of jobs.toml."""
    head = config.path.read_text().split("\n[agent.email]")[0]
    config.path.write_text(
        f'{head}\n[agent.email]\nto = ["ops@example.org"]\nsmtp_host = "127.0.0.1"\n'
        f'smtp_port = {port}\nsmtp_tls = "none"\non = {on}\n'
    )


def test_failure_mail_has_subject_suggestion_and_log_tail(
    write_config: WriteConfig, ftp_server: LocalFtpServer, smtp
) -> None:
    port, received = smtp
    config = write_config()
    _with_mail(config, port)
    ftp_server.block_passive()
    result = run_job(load_config(config.path), "www")
    assert result.exit_code == 1
    assert len(received) == 1
    mail = received[0]
    assert mail["Subject"] == f"[backupagent] FAILED www on {socket.gethostname()}"
    body = mail.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert body.startswith("What to do:\nJob 'www': the data connection in passive mode failed")
    assert "set passive = false" in body.split("Job www on")[0]  # the advice comes first
    assert "Last 40 events of the debug log" in body and "FTP client command: EPSV" in body


def test_success_sends_no_mail_unless_asked(write_config: WriteConfig, smtp) -> None:
    port, received = smtp
    config = write_config()
    _with_mail(config, port)
    assert run_job(load_config(config.path), "www").outcome == "success"
    assert received == []
    _with_mail(config, port, on='["success"]')
    assert run_job(load_config(config.path), "www").outcome == "success"
    assert received and received[0]["Subject"].startswith("[backupagent] OK www on ")


def test_unreachable_mail_server_does_not_fail_the_backup(write_config: WriteConfig) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe closes
    config = write_config()
    _with_mail(config, closed_port, on='["success"]')
    result = run_job(load_config(config.path), "www")
    assert result.outcome == "success" and result.exit_code == 0


class _Recorder(BaseHTTPRequestHandler):
    hits: ClassVar[list[tuple[str, str, bytes]]] = []
    hang: ClassVar[threading.Event] = threading.Event()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).hits.append((self.command, self.path, body))
        if self.path.startswith("/hang"):
            type(self).hang.wait(30)  # a ping endpoint that never answers in time
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[tuple[str, type[_Recorder]]]:
    class Recorder(_Recorder):  # fresh class state for each test
        hits: ClassVar[list[tuple[str, str, bytes]]] = []
        hang: ClassVar[threading.Event] = threading.Event()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", Recorder
    finally:
        Recorder.hang.set()
        server.shutdown()
        server.server_close()


def test_pings_in_order(write_config: WriteConfig, ftp_server: LocalFtpServer, web) -> None:
    base, recorder = web
    config = write_config(job=f'[jobs.www.ping]\nurl = "{base}/abc"')
    assert run_job(config, "www").outcome == "success"
    ftp_server.block_passive()
    assert run_job(config, "www").exit_code == 1
    assert [(m, p) for m, p, _ in recorder.hits] == [
        ("GET", "/abc/start"),
        ("GET", "/abc"),
        ("GET", "/abc/start"),
        ("GET", "/abc/fail"),
    ]


def test_ping_posts_the_summary(write_config: WriteConfig, web) -> None:
    base, recorder = web
    config = write_config(job=f'[jobs.www.ping]\non_success = "{base}/ok"\npost_summary = true')
    result = run_job(config, "www")
    method, path, body = recorder.hits[-1]
    assert (method, path) == ("POST", "/ok")
    summary = json.loads(body)
    assert summary["result"] == "success" and summary["backup_id"] == result.backup_id
    assert summary["format"] == 1 and summary["started"].endswith("Z")


def test_hanging_ping_endpoint_is_bounded(write_config: WriteConfig, web) -> None:
    base, _ = web
    config = write_config(job=f'[jobs.www.ping]\nurl = "{base}/hang"\ntimeout = 1\nretries = 0')
    started = time.monotonic()
    result = run_job(config, "www")
    took = time.monotonic() - started
    assert result.outcome == "success"
    assert took < 6  # two pings (start, success), each cut off after 1 s


def test_metrics_file_parses(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    metrics = tmp_path / "textfile" / "backupagent.prom"
    config = write_config()
    never = '\n[jobs.never]\ndestination = "test"\nsources = ["/srv"]\n'  # never ran
    config.path.write_text(
        config.path.read_text().replace("[agent]\n", f'[agent]\nmetrics_file = "{metrics}"\n')
        + never
    )
    config = load_config(config.path)
    before = time.time()
    assert run_job(config, "www").outcome == "success"
    assert verify(config, "www")[0]
    verified = time.time()
    assert drill(config, "www").ok  # files only: nothing to load
    drilled = time.time()
    ftp_server.block_passive()
    failed = run_job(config, "www")
    families = {f.name: f for f in parser.text_string_to_metric_families(metrics.read_text())}
    value = {
        name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for name, f in families.items()
    }
    job = (("job", "www"),)
    assert value["backupagent_last_success_timestamp_seconds"][(("job", "never"),)] == 0
    assert before < value["backupagent_last_verify_success_timestamp_seconds"][job] < verified
    assert (("job", "never"),) not in value["backupagent_last_verify_success_timestamp_seconds"]
    # the metric has milliseconds: the drill may start within the one that ended the verify
    assert (
        verified - 0.001 < value["backupagent_last_drill_success_timestamp_seconds"][job] < drilled
    )
    assert value["backupagent_last_run_result"][(("job", "www"), ("result", "failed"))] == 1
    assert value["backupagent_last_run_result"][(("job", "www"), ("result", "success"))] == 0
    assert before - 1 < value["backupagent_last_success_timestamp_seconds"][job] < time.time()
    assert (
        value["backupagent_last_run_timestamp_seconds"][job]
        > value["backupagent_last_success_timestamp_seconds"][job]
    )
    assert value["backupagent_last_run_warnings"][job] == len(failed.warnings)
    assert "backupagent_last_run_uploaded_bytes" in value
    assert [p.name for p in metrics.parent.iterdir()] == ["backupagent.prom"]  # no temp left


def test_metrics_temporary_file_is_not_read_as_metrics_and_goes_on_failure(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node_exporter reads every *.prom in its directory: the half-written file must not
    be one; and when the rename fails, the temporary file does not stay behind."""
    from backupagent import notify

    textfiles = tmp_path / "textfile"
    metrics = textfiles / "backupagent.prom"
    config = write_config()
    config.path.write_text(
        config.path.read_text().replace("[agent]\n", f'[agent]\nmetrics_file = "{metrics}"\n')
    )
    config = load_config(config.path)
    renamed: list[str] = []
    real_replace = notify.os.replace

    def replace(source: str, target: Path) -> None:
        renamed.append(Path(source).name)
        real_replace(source, target)

    monkeypatch.setattr(notify.os, "replace", replace)
    notify.write_metrics(config)
    assert metrics.is_file() and not renamed[0].endswith(".prom")
    metrics.unlink()
    metrics.mkdir()  # the rename now fails: a directory is in the way
    (metrics / "keep").write_text("x")
    notify.write_metrics(config)
    assert len(renamed) == 2
    assert sorted(p.name for p in textfiles.iterdir()) == ["backupagent.prom"]
    assert [p.name for p in metrics.iterdir()] == ["keep"]


def test_metrics_name_only_the_configured_jobs(write_config: WriteConfig, tmp_path: Path) -> None:
    """A job removed from jobs.toml keeps its history but leaves the metrics."""
    metrics = tmp_path / "textfile" / "backupagent.prom"
    config = write_config()
    config.path.write_text(
        config.path.read_text().replace("[agent]\n", f'[agent]\nmetrics_file = "{metrics}"\n')
    )
    text = config.path.read_text()
    config.path.write_text(
        text + text[text.index("[jobs.www]") :].replace("[jobs.www]", "[jobs.old]")
    )
    both = load_config(config.path)
    assert run_job(both, "old").outcome == "success"
    assert 'job="old"' in metrics.read_text()
    config.path.write_text(text)  # `old` removed
    only = load_config(config.path)
    assert run_job(only, "www").outcome == "success"
    exported = metrics.read_text()
    assert 'job="www"' in exported and 'job="old"' not in exported
    with History(only.agent.state_dir) as history:
        assert "old" in history.latest_per_job(also=only.jobs)  # the history keeps it


def test_progress_events_without_a_terminal(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "www" / "bulk.bin").write_bytes(b"\0" * 3_000_000)
    config = write_config()
    config.path.write_text(
        config.path.read_text().replace("[agent]\n", "[agent]\nprogress_interval = 0.001\n")
    )
    result = run_job(load_config(config.path), "www")
    progress = [e for e in read_events(result.log_path) if e["event"] == "progress"]
    assert {e["phase"] for e in progress} == {"archive", "upload"}
    assert max(e["entries_archived"] for e in progress) >= 5  # the site's files and dirs
    assert any(e.get("eta_seconds") is not None for e in progress if e["phase"] == "upload")


def test_run_job_command_logs_progress_at_the_configured_interval(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """`run-job` without a terminal: progress events every `progress_interval`, not 30 s."""
    (tmp_path / "www" / "bulk.bin").write_bytes(b"\0" * 3_000_000)
    config = write_config()
    config.path.write_text(
        config.path.read_text().replace("[agent]\n", "[agent]\nprogress_interval = 0.001\n")
    )
    assert cli(config.path, "run-job", "www").returncode == 0
    log = sorted((tmp_path / "log" / "www").glob("*.jsonl"))[-1]
    assert any(e["event"] == "progress" for e in read_events(log))


def test_starttls_and_login(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    import ssl

    controller_mod = pytest.importorskip("aiosmtpd.controller")
    smtp_mod = pytest.importorskip("aiosmtpd.smtp")
    from .helpers import make_certificates

    (tmp_path / "certs").mkdir()
    certs = make_certificates(tmp_path / "certs")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certs["cert"], certs["key"])
    received: list = []
    logins: list[str] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data):
        logins.append(auth_data.login.decode())
        ok = auth_data.login == b"mailer" and auth_data.password == b"smtp-secret"
        return smtp_mod.AuthResult(success=ok)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = controller_mod.Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        (tmp_path / "smtp.pass").write_text("smtp-secret\n")
        config = write_config()
        head = config.path.read_text()
        config.path.write_text(
            f'{head}\n[agent.email]\nto = ["ops@example.org"]\nsmtp_host = "127.0.0.1"\n'
            f'smtp_port = {port}\nsmtp_tls = "starttls"\nsmtp_user = "mailer"\n'
            f'password_file = "{tmp_path / "smtp.pass"}"\nsmtp_ca_file = "{certs["ca"]}"\n'
        )
        ftp_server.block_passive()
        assert run_job(load_config(config.path), "www").exit_code == 1
    finally:
        controller.stop()
    assert logins == ["mailer"]
    assert len(received) == 1 and received[0]["Subject"].startswith("[backupagent] FAILED")


def test_mail_shows_what_the_server_sent_escaped(tmp_path: Path) -> None:
    """A reply with terminal escapes and bytes that are not UTF-8 reaches the mail as
    visible escapes, and the message can still be encoded and sent."""
    from backupagent.config import EmailSettings
    from backupagent.notify import compose
    from backupagent.outcome import RunResult

    log = tmp_path / "run.jsonl"
    log.write_text('{"event": "FTP server reply: 530 \\u001b[2J \\udce9", "level": "debug"}\n')
    result = RunResult("www", "r1", log, outcome="failed")
    result.error = "the server refused the login"
    result.suggestion = "Evidence:\n  FTP server reply: 530 \x1b[2J\x1b]0;pwned\x07 caf\udce9"
    message = compose(EmailSettings(to=["admin@example.com"]), "www", result)
    body = message.get_content()
    assert "\x1b" not in body and "\x07" not in body
    assert "530 \\x1b[2J\\x1b]0;pwned\\x07 caf\\xe9" in body
    message.as_bytes()  # encodable: no surrogate left


@pytest.mark.parametrize("kind", ["verify", "drill"])
def test_a_failed_check_is_mailed_as_what_it_was(
    kind: str, write_config: WriteConfig, ftp_server: LocalFtpServer, smtp
) -> None:
    port, received = smtp
    config = write_config()
    assert run_job(config, "www").outcome == "success"
    archive = next((ftp_server.root / "backups/site").glob("*.tar.zst.0001"))
    archive.write_bytes(archive.read_bytes()[:-1] + b"!")  # the hash no longer matches
    _with_mail(config, port)
    config = load_config(config.path)
    if kind == "verify":
        ok, message, _ = verify(config, "www")
    else:
        drilled = drill(config, "www")
        ok, message = drilled.ok, drilled.message
    assert not ok and "does not match its manifest" in message
    assert [m["Subject"] for m in received] == [
        f"[backupagent] FAILED {kind} of www on {socket.gethostname()}"
    ]


def test_a_mail_lists_each_destination_of_a_job_with_several(tmp_path: Path) -> None:
    from backupagent.config import EmailSettings
    from backupagent.notify import compose
    from backupagent.outcome import DestinationResult, RunResult
    from backupagent.views import summary

    log = tmp_path / "run.jsonl"
    log.write_text("")
    result = RunResult("www", "r1", log, outcome="warning")
    result.destinations = [
        DestinationResult("offsite", "failed", "553 Could not create file."),
        DestinationResult("nas", "success"),
    ]
    body = compose(EmailSettings(to=["admin@example.com"]), "www", result).get_content()
    assert "Destinations:\n  offsite: failed — 553 Could not create file.\n  nas: success" in body
    assert [d["name"] for d in summary(result)["destinations"]] == ["offsite", "nas"]
