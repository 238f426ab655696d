"""A scripted server that abuses the protocol: endless replies, a drip, bytes that are
not UTF-8, terminal escapes, unparsable passive replies. Each must end in a diagnosed
failure, bounded in time and memory, recorded in the history, printed escaped."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from backupagent.config import FtpDestination
from backupagent.destinations.ftp.remote import FtpRemote
from backupagent.logging import read_events, run_logs
from backupagent.retention import complete_backups
from backupagent.state import History

from ..helpers import cli, peak_rss_mib
from ..scripted import ScriptedFtp, ScriptedSession, jobs_toml, serve


def _last_run(tmp_path: Path) -> dict:
    with History(tmp_path / "state") as history:
        run = history.last("www")
    assert run is not None and run.result == "failed", run  # never left `running`
    return read_events(run_logs(tmp_path / "log", "www")[-1])[-1]


def _endless(session: ScriptedSession, _arg: str) -> None:
    while True:  # until the client hangs up (send then fails, and the thread ends)
        session.send("331-" + "x" * 1000)


def test_an_endless_multiline_reply_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    with ScriptedFtp({"USER": _endless}) as server:
        argv = [sys.executable, "-m", "backupagent", "--config", str(jobs_toml(tmp_path, server))]
        result, peak = peak_rss_mib([*argv, "run-job", "www"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert _last_run(tmp_path)["category"] == "server_protocol_error"
    assert "a reply of over 1000 lines" in result.stdout
    assert peak < 150, f"run-job peaked at {peak:.0f} MiB"


def _drip(session: ScriptedSession, _arg: str) -> None:
    session.conn.sendall(b"331 ")
    while True:  # one byte every 0.2 s: every recv gets something, the reply never ends
        session.conn.sendall(b"x")  # fails once the client has gone: the thread ends
        time.sleep(0.2)


def test_a_dripping_server_fails_within_timeout(tmp_path: Path) -> None:
    # timeout = 2: the reply never ends, so no timeout changes the outcome; only the
    # whole-reply deadline stops it (per recv, each byte would reset the clock)
    with ScriptedFtp({"USER": _drip}) as server:
        config = jobs_toml(tmp_path, server, "timeout = 2\nretries = 0")
        result = cli(config, "run-job", "www")  # cli() bounds it at 300 s: a hang fails
    assert result.returncode == 1, result.stdout + result.stderr
    assert _last_run(tmp_path)["category"] == "control_connection_lost"
    assert "timed out after 2s" in result.stdout


def test_escapes_and_bytes_that_are_not_utf8_are_shown_escaped(tmp_path: Path) -> None:
    evil = "530 \x1b[2J\x1b]0;pwned\x07 caf\xe9 refused"  # sent as Latin-1: \xe9 is not UTF-8
    with ScriptedFtp({"PASS": evil}) as server:
        config = jobs_toml(tmp_path, server)
        result = cli(config, "run-job", "www")
        logs = cli(config, "logs", "www")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + logs.stderr
    last = _last_run(tmp_path)
    assert last["category"] == "login"
    assert "FTP server reply: 530 \x1b[2J" in last["evidence"][1]  # the log keeps it exact
    for out in (result.stdout, result.stderr, logs.stdout):
        assert "\x1b" not in out and "\x07" not in out
    assert "530 \\x1b[2J\\x1b]0;pwned\\x07 caf\\xe9 refused" in result.stdout
    assert "\\x1b[2J" in logs.stdout


@pytest.mark.parametrize(
    "reply",
    [
        "229 Entering Extended Passive Mode (|||abc|)",
        "229 Entering Extended Passive Mode (|||70000|)",
    ],
)
def test_an_unparsable_passive_reply_is_a_protocol_error(tmp_path: Path, reply: str) -> None:
    with ScriptedFtp({"EPSV": reply}) as server:
        result = cli(jobs_toml(tmp_path, server), "run-job", "www")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "internal error" not in result.stdout and "Traceback" not in result.stderr
    last = _last_run(tmp_path)
    assert last["category"] == "server_protocol_error"
    assert "epsv = false" in last["text"]


def test_a_name_that_is_not_utf8_survives_listing_and_deletion(tmp_path: Path) -> None:
    latin1 = "www-20200101T000000.000Z-aaaaaa.tar.zst.0001.caf\xe9.partial"
    listing = (
        f"{latin1}\r\nwww-20261122T050000.000Z-abcdef.manifest.json\r\n"
        "www-20261122T050000.000Z-abcdef.tar.zst.0001\r\n"
    ).encode("latin-1")
    with ScriptedFtp({"NLST": serve(listing), "DELE": "250 Deleted."}) as server:
        dest = FtpDestination.model_validate(
            {"type": "ftp", "host": "127.0.0.1", "port": server.port, "password": "x"}
        )
        remote = FtpRemote(dest, passive=True)
        try:
            names = remote.call("listing", lambda session, _attempt: session.names())
            assert [b.backup_id for b in complete_backups("www", names)] == [
                "www-20261122T050000.000Z-abcdef"
            ]
            odd = next(n for n in names if n.endswith(".partial"))
            remote.delete([odd])
        finally:
            remote.close()
        assert f"DELE {latin1}" in server.commands()  # the very bytes the server listed


def test_the_clean_up_after_sigterm_is_bounded_whatever_the_server_does(tmp_path: Path) -> None:
    """Mid-upload the server stops reading; after SIGTERM, the clean-up connection meets
    a server that drips its replies. The run still ends, within about one `timeout`."""
    import signal
    import subprocess

    def user(session: ScriptedSession, arg: str) -> str | None:
        if len(server.sessions) > 1:  # the clean-up's connection (after the run's one)
            _drip(session, arg)
            return None
        return "331 Password please."

    def stor(session: ScriptedSession, _arg: str) -> None:
        assert session.passive is not None
        session.send("150 Go ahead.")
        session.data = session.passive.accept()[0]  # type: ignore[attr-defined]  # never read

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "big.bin").write_bytes(os.urandom(8 << 20))  # more than buffers hold
    server = ScriptedFtp({"USER": user, "STOR": stor})
    with server:
        # timeout = 3: the server never answers, so no timeout changes what happens;
        # the bound below is stated in terms of it
        config = jobs_toml(tmp_path, server, "timeout = 3")
        agent = subprocess.Popen(
            [sys.executable, "-m", "backupagent", "--config", str(config), "run-job", "www"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not any(c.startswith("STOR ") for c in server.commands()):  # bounded wait
            assert time.monotonic() < deadline and agent.poll() is None, agent.communicate()
            time.sleep(0.05)
        agent.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        out, err = agent.communicate(timeout=60)
        took = time.monotonic() - stopped
    assert agent.returncode == 1, out + err
    assert took < 3 + 3 + 5, took  # one timeout for the clean-up's reply, one for the watchdog
    assert "could not remove incomplete upload" in err
    with History(tmp_path / "state") as history:
        assert history.last("www").result == "aborted"
