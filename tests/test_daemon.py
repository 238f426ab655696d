"""`backupagent daemon` as a real subprocess: schedule, reload, locking, catch-up, stop.

Schedules use the optional leading seconds field ("*/2 * * * * *") so that nothing
waits minutes. The tests synchronise on what the daemon does (sd_notify datagrams,
rows in the run history, files on the FTP server), each wait bounded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backupagent.ftpserver import LocalFtpServer
from backupagent.state import History, Run

from .conftest import WriteConfig
from .helpers import cli, wait_for

EVERY_2S = 'schedule = "*/2 * * * * *"'


class DaemonProcess:
    """The daemon in a subprocess, with a datagram socket standing in for systemd."""

    def __init__(self, config: Path, tmp_path: Path, watchdog_usec: int | None = None) -> None:
        self.config = config
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock_path = tmp_path / f"notify-{time.monotonic_ns()}"
        self.sock.bind(str(self.sock_path))
        self.stderr_path = tmp_path / f"daemon-{time.monotonic_ns()}.err"
        env = {**os.environ, "NOTIFY_SOCKET": str(self.sock_path)}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backupagent", "--config", str(config), "daemon"],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=env,
        )
        self.messages: list[str] = []

    def wait_message(self, wanted: str, timeout: float = 20) -> None:
        """Block until a datagram containing `wanted` arrives."""
        deadline = time.monotonic() + timeout
        while not any(wanted in m for m in self.messages):
            left = deadline - time.monotonic()
            if self.proc.poll() is not None:
                self._drain()  # it may have sent its last datagrams just before exiting
                if any(wanted in m for m in self.messages):
                    return
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(
                    f"no {wanted!r} from the daemon; got {self.messages}\n"
                    f"{self.stderr_path.read_text()}"
                )
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue

    def _drain(self) -> None:
        """Read every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()
        self.sock.close()

    @property
    def output(self) -> str:
        return self.stderr_path.read_text()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def launch(config: Path, **kwargs: int) -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path, **kwargs)
        started.append(daemon)
        return daemon

    yield launch
    for daemon in started:
        daemon.close()


def runs(state_dir: Path, job: str = "www") -> list[Run]:
    with History(state_dir) as history:
        return history.runs(job)


def test_runs_on_schedule_and_speaks_sd_notify(
    write_config: WriteConfig, tmp_path: Path, start: Callable[..., DaemonProcess]
) -> None:
    config = write_config(job=EVERY_2S)
    daemon = start(config.path, watchdog_usec=300_000)
    daemon.wait_message("READY=1")
    daemon.wait_message("STATUS=next: www at ")
    done = wait_for(
        lambda: [r for r in runs(config.agent.state_dir) if r.result == "success"],
        "a scheduled run",
    )
    assert done[0].trigger == "schedule"
    daemon.wait_message("WATCHDOG=1")
    assert daemon.stop() == 0


def test_sigterm_sends_stopping(
    write_config: WriteConfig, start: Callable[..., DaemonProcess]
) -> None:
    config = write_config(job='schedule = "0 3 * * *"')
    daemon = start(config.path)
    daemon.wait_message("READY=1")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_message("STOPPING=1")
    assert daemon.proc.wait(timeout=30) == 0


def test_reload_keeps_old_jobs_on_invalid_file_and_adds_new_ones(
    write_config: WriteConfig, tmp_path: Path, start: Callable[..., DaemonProcess]
) -> None:
    config = write_config(job='schedule = "0 3 * * *"')
    daemon = start(config.path)
    daemon.wait_message("READY=1")
    original = config.path.read_text()

    config.path.write_text(original.replace('schedule = "0 3 * * *"', 'schedule = "soon"'))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the jobs as they were" in daemon.output, "the refused reload")
    assert "[jobs.www] schedule: 'soon' is not a cron expression" in daemon.output
    assert daemon.proc.poll() is None

    config.path.write_text(
        original + f'\n[jobs.second]\ndestination = "test"\n'
        f'sources = ["{tmp_path / "www"}"]\n{EVERY_2S}\n'
    )
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: [r for r in runs(config.agent.state_dir, "second") if r.result == "success"],
        "the new job to run",
    )
    assert runs(config.agent.state_dir, "www") == []  # its 03:00 schedule did not fire
    assert daemon.stop() == 0


def _slow_site(tmp_path: Path) -> None:
    (tmp_path / "www" / "big.bin").write_bytes(os.urandom(3_000_000))


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[LocalFtpServer]:
    root = tmp_path / "slow-root"
    root.mkdir()
    with LocalFtpServer(root, throttle=300_000) as server:  # ~10 s for the site
        yield server


def _partials(server: LocalFtpServer) -> list[Path]:
    return list(server.root.rglob("*.partial"))


def test_manual_run_refused_while_daemon_runs_it_then_sigterm_mid_upload(
    write_config: WriteConfig,
    tmp_path: Path,
    slow_server: LocalFtpServer,
    start: Callable[..., DaemonProcess],
) -> None:
    _slow_site(tmp_path)
    config = write_config(job=EVERY_2S)
    text = config.path.read_text().replace(
        f"port = {config.destinations['test'].port}", f"port = {slow_server.port}"
    )
    config.path.write_text(text)
    daemon = start(config.path)
    daemon.wait_message("READY=1")
    wait_for(lambda: _partials(slow_server), "the upload to start")

    manual = subprocess.run(
        [sys.executable, "-m", "backupagent", "--config", str(config.path), "run-job", "www"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert manual.returncode == 75
    assert "already running" in manual.stderr

    stopping = time.monotonic()
    assert daemon.stop(timeout=60) == 0
    assert time.monotonic() - stopping < 30
    assert _partials(slow_server) == []
    assert not [p for p in slow_server.root.rglob("*") if p.is_file()]
    history = runs(config.agent.state_dir)
    assert [r.result for r in history] == ["aborted"]
    assert list((config.agent.spool_dir / "www").iterdir()) == []


def test_catch_up_uses_the_run_history(
    write_config: WriteConfig, tmp_path: Path, start: Callable[..., DaemonProcess]
) -> None:
    daily = 'schedule = "0 3 * * *"'
    config = write_config(job=daily)
    extra = "".join(
        f'\n[jobs.{name}]\ndestination = "test"\nsources = ["{tmp_path / "www"}"]\n{daily}\n'
        for name in ("recent", "never")
    )
    config.path.write_text(config.path.read_text() + extra)
    now = dt.datetime.now(dt.UTC)
    with History(config.agent.state_dir) as history:
        history.save(
            Run(
                "old",
                "www",
                "schedule",
                now - dt.timedelta(days=2),
                "l",
                "success",
                now - dt.timedelta(days=2),
            )
        )
        history.save(Run("new", "recent", "schedule", now, "l", "success", now))

    daemon = start(config.path)
    daemon.wait_message("READY=1")
    caught = wait_for(
        lambda: [
            r
            for r in runs(config.agent.state_dir)
            if r.trigger == "catch-up" and r.result == "success"
        ],
        "the catch-up run",
    )
    assert len(caught) == 1
    assert "catching up a missed run" in daemon.output
    assert "job=recent" not in daemon.output.split("catching up")[1]
    assert runs(config.agent.state_dir, "never") == []
    assert daemon.stop() == 0

    restarted = start(config.path)  # the catch-up succeeded: nothing is missed now
    restarted.wait_message("READY=1")
    assert "catching up" not in restarted.output
    assert restarted.stop() == 0


def test_a_long_job_does_not_delay_another(
    write_config: WriteConfig,
    tmp_path: Path,
    slow_server: LocalFtpServer,
    start: Callable[..., DaemonProcess],
) -> None:
    _slow_site(tmp_path)  # "www" goes to the slow server and takes ~10 s
    config = write_config(job=EVERY_2S)
    quick_site = tmp_path / "quick"
    quick_site.mkdir()
    (quick_site / "index.html").write_text("small")
    fast_port = config.destinations["test"].port
    text = config.path.read_text().replace(f"port = {fast_port}", f"port = {slow_server.port}")
    fast_dest = text.split("[destinations.test]")[1].split("[jobs.www]")[0]
    text += (
        f"\n[destinations.fast]{fast_dest.replace(f'port = {slow_server.port}', f'port = {fast_port}')}"
        f'\n[jobs.quick]\ndestination = "fast"\nsources = ["{quick_site}"]\n{EVERY_2S}\n'
    )
    config.path.write_text(text)
    daemon = start(config.path)
    daemon.wait_message("READY=1")
    wait_for(lambda: _partials(slow_server), "the slow upload to start")
    wait_for(
        lambda: [r for r in runs(config.agent.state_dir, "quick") if r.result == "success"],
        "the quick job to run",
    )
    assert [r.result for r in runs(config.agent.state_dir, "www")] == ["running"]
    assert daemon.stop() == 0


@pytest.mark.parametrize("kind", ["verify", "drill"])
def test_verify_and_drill_schedules(
    kind: str, write_config: WriteConfig, start: Callable[..., DaemonProcess]
) -> None:
    config = write_config(job=f'{kind}_schedule = "*/2 * * * * *"')
    subprocess.run(
        [sys.executable, "-m", "backupagent", "--config", str(config.path), "run-job", "www"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    daemon = start(config.path)
    daemon.wait_message("READY=1")
    verified = wait_for(  # recorded like a backup run: `running` first, then its result
        lambda: [
            r for r in runs(config.agent.state_dir) if r.trigger == kind and r.result != "running"
        ],
        f"a finished {kind} run",
    )
    assert verified[0].result == "success"
    assert daemon.stop() == 0


def test_six_jobs_at_once_run_at_most_max_parallel_at_a_time(
    write_config: WriteConfig, tmp_path: Path, start: Callable[..., DaemonProcess]
) -> None:
    """Six jobs due at the same second, each kept busy a second by its `before` hook:
    never more than two run at once (from the history), and two do."""
    config = write_config()
    text = config.path.read_text().replace("[agent]\n", "[agent]\nmax_parallel = 2\n")
    job = text.split("[jobs.www]")[1]
    text = text.split("[jobs.www]")[0]
    names = [f"site{i}" for i in range(6)]
    for name in names:
        text += f'[jobs.{name}]{job}\nschedule = "*/10 * * * * *"\nbefore = "sleep 1"\n'
    config.path.write_text(text)
    daemon = start(config.path)
    daemon.wait_message("READY=1")
    state = config.agent.state_dir

    def all_done() -> bool:
        return all(any(r.result == "success" for r in runs(state, n)) for n in names)

    def states() -> set[str]:
        listing = json.loads(cli(config.path, "list", "--json").stdout)
        return {j["state"] for j in listing["jobs"]}

    wait_for(lambda: {"running", "queued"} <= states(), "list to show running and queued jobs")
    wait_for(all_done, "every job to run once", timeout=60)
    assert daemon.stop() == 0
    spans = [(r.started, r.finished) for n in names for r in runs(state, n) if r.finished]
    edges = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])
    at_once = peak = 0
    for _, step in edges:
        at_once += step
        peak = max(peak, at_once)
    assert peak == 2, spans
    assert "run queued: max_parallel runs are running" in daemon.output
    assert not (state / "daemon.json").exists()  # removed when the daemon stopped


def test_a_new_wordpress_site_is_picked_up_on_sighup(
    write_config: WriteConfig, tmp_path: Path, start: Callable[..., DaemonProcess]
) -> None:
    """Found sites run on the defaults' schedule; one added later runs after a reload.
    (Their databases do not exist here: the runs fail at the dump, which is enough to
    show each was planned and run.)"""
    from .test_discovery import site

    www = tmp_path / "sites"
    site(www / "alpha")
    config = write_config()
    text = config.path.read_text().split("[jobs.www]")[0]
    text += f'[discover]\nwordpress = "{www}/*/"\n[defaults]\ndestination = "test"\n{EVERY_2S}\n'
    config.path.write_text(text)
    daemon = start(config.path)
    daemon.wait_message("READY=1")
    state = config.agent.state_dir
    wait_for(lambda: runs(state, "alpha"), "the found site to run")
    assert runs(state, "beta") == []
    site(www / "beta")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: runs(state, "beta"), "the site added later to run after SIGHUP")
    assert daemon.stop() == 0
