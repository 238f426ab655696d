"""Hooks: a built environment (no secrets unless named), output bounded into the log,
a timeout that kills the hook's whole process group."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from backupagent.config import Hook
from backupagent.hooks import LOGGED_LINES, environment, run_hook
from backupagent.logging import read_events, run_log

from .helpers import wait_for


def test_the_environment_is_built_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFSITE_FTP_PASSWORD", "s3cret")  # a password_env secret
    monkeypatch.setenv("WP_CLI_PHP", "/usr/bin/php8.2")
    monkeypatch.setenv("HOME", "/root")
    env = environment(Hook(run="true", env=["WP_CLI_PHP"]), {"BACKUPAGENT_JOB": "www"})
    assert "OFFSITE_FTP_PASSWORD" not in env
    assert env["WP_CLI_PHP"] == "/usr/bin/php8.2" and env["HOME"] == "/root"
    assert env["BACKUPAGENT_JOB"] == "www" and env["PATH"]
    assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "WP_CLI_PHP", "BACKUPAGENT_JOB"}


def test_a_hook_sees_only_that(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFSITE_FTP_PASSWORD", "s3cret")
    out = tmp_path / "env.json"
    command = f"python3 -c 'import json, os; print(json.dumps(dict(os.environ)))' > {out}"
    ran = run_hook("before", Hook(run=command), {"BACKUPAGENT_JOB": "www"})
    assert ran.ok, ran
    seen = json.loads(out.read_text())
    assert "OFFSITE_FTP_PASSWORD" not in seen and seen["BACKUPAGENT_JOB"] == "www"


def test_output_goes_to_the_run_log_bounded(tmp_path: Path) -> None:
    command = f"i=0; while [ $i -lt {LOGGED_LINES + 500} ]; do echo line $i; i=$((i+1)); done; echo oops >&2; exit 3"
    with run_log(tmp_path, "www", "r1") as path:
        ran = run_hook("after", Hook(run=command), {})
    assert ran.returncode == 3 and not ran.ok
    assert ran.verdict == "the after hook failed (exit code 3)"
    assert ran.tail[-1] == "oops"  # stderr too, in order
    events = read_events(path)
    lines = [e["line"] for e in events if e["event"] == "hook output"]
    assert len(lines) == LOGGED_LINES and lines[0] == "line 0"
    (ended,) = [e for e in events if e["event"] == "the after hook ended"]
    assert ended["returncode"] == 3 and ended["lines_not_logged"] == 501


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """The command never ends by itself, so a 1 s timeout decides nothing but when."""
    pid_file = tmp_path / "child.pid"
    command = f"sleep 600 & echo $! > {pid_file}; sleep 600"
    ran = run_hook("before", Hook(run=command, timeout=1), {})
    assert ran.returncode is None and not ran.ok
    assert "killed after its timeout" in ran.verdict
    # Killed with the group: its pipe closed (the hook's end) before the kernel marks it
    # dead, so its state may still read R for a moment. Not killed, it would sleep (S).
    child = int(pid_file.read_text())
    wait_for(lambda: _state(child) in ("gone", "Z"), "the background child to die", 10)


def _state(pid: int) -> str:
    """A process's state letter (Z: dead, not yet reaped by init), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.parametrize(("command", "timeout"), [("", 3600.0), ("; sleep 600", 1.0)])
def test_a_daemon_the_hook_started_does_not_hold_the_run(
    tmp_path: Path, command: str, timeout: float
) -> None:
    """A hook that starts a daemon in a session of its own (out of reach of the group
    kill) which keeps stdout: the run goes on once the hook itself has ended, or been
    killed at its timeout (1 s: the daemon sleeps far longer either way)."""
    pid_file = tmp_path / "daemon.pid"
    script = f"setsid sleep 600 & echo $! > {pid_file}; echo started{command}"
    try:
        with run_log(tmp_path, "www", "r1") as path:
            ran = run_hook("before", Hook(run=script, timeout=timeout), {})
        daemon = int(pid_file.read_text())
        assert _state(daemon) == "S"  # still running, holding the pipe
        assert ran.seconds < 60  # not reading past the hook's end, it would wait 600 s
        assert ran.tail == ("started",)
        assert ran.ok == (timeout > 1)
        events = [e["event"] for e in read_events(path)]
        assert any("keeps its output open" in e for e in events)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
