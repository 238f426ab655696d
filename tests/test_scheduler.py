"""The scheduler's decisions and its sd_notify, without starting a daemon."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pytest

from backupagent.config import cron_trigger
from backupagent.scheduler import Notifier, catch_up_reference, missed_run
from backupagent.state import History, Run

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "since", "now", "due"),
    [
        ("0 3 * * *", "2026-11-20T03:00:05", "2026-11-22T09:00", "2026-11-21T03:00"),
        ("0 3 * * *", "2026-11-22T03:00:05", "2026-11-22T09:00", None),
        ("0 3 * * *", "2026-11-22T02:59:00", "2026-11-22T03:00", "2026-11-22T03:00"),
        ("0 3 * * *", "2026-11-22T02:59:00", "2026-11-22T02:59:59", None),
        ("0 3 * * 0", "2026-11-15T03:00:09", "2026-11-21T23:00", None),  # next Sunday not yet
        ("0 3 * * 0", "2026-11-15T03:00:09", "2026-11-22T03:30", "2026-11-22T03:00"),
        ("0 3 * * *", None, "2026-11-22T09:00", None),  # never ran: nothing was missed
    ],
)
def test_missed_run(schedule: str, since: str | None, now: str, due: str | None) -> None:
    trigger = cron_trigger(schedule, "UTC")
    found = missed_run(trigger, at(since) if since else None, at(now))
    assert found == (at(due) if due else None)


def test_catch_up_reference_prefers_last_success(tmp_path: Path) -> None:
    with History(tmp_path) as history:
        assert catch_up_reference(history, "www") is None
        history.save(Run("r1", "www", "schedule", at("2026-11-01T03:00"), "l", "failed"))
        assert catch_up_reference(history, "www") == at("2026-11-01T03:00")
        history.save(Run("r2", "www", "schedule", at("2026-11-02T03:00"), "l", "warning"))
        history.save(Run("r3", "www", "schedule", at("2026-11-03T03:00"), "l", "failed"))
        assert catch_up_reference(history, "www") == at("2026-11-02T03:00")


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_reaches_a_datagram_socket(tmp_path: Path, abstract: bool) -> None:
    name = f"\0ba-test-{tmp_path.name}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(name)
        sock.settimeout(5)
        env = {"NOTIFY_SOCKET": "@" + name[1:] if abstract else name, "WATCHDOG_USEC": "2000000"}
        notifier = Notifier(env)
        assert notifier.watchdog_interval == 1.0
        notifier.send("READY=1", "STATUS=next: www")
        assert sock.recv(4096) == b"READY=1\nSTATUS=next: www"


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    notifier.send("READY=1")
    assert notifier.watchdog_interval is None


def test_watchdog_for_another_pid_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
