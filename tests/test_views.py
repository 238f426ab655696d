"""The JSON shapes and the one human time format, table-driven over plain data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from backupagent.config import Problem
from backupagent.manifest import parse
from backupagent.outcome import DestinationResult, RunResult
from backupagent.retrieve import BackupInfo
from backupagent.state import Run
from backupagent.views import (
    backup_view,
    document,
    parse_time,
    problem_view,
    run_view,
    summary,
    utc,
    when,
)

CET = dt.timezone(dt.timedelta(hours=1))


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (dt.datetime(2026, 12, 6, 3, 0, 0, 999_999, tzinfo=dt.UTC), "2026-12-06T03:00:00Z"),
        (dt.datetime(2026, 12, 6, 4, 0, 0, tzinfo=CET), "2026-12-06T03:00:00Z"),
        (None, None),
    ],
)
def test_utc_is_whole_seconds_with_z(moment: dt.datetime | None, expected: str | None) -> None:
    assert utc(moment) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-06T03:00:00+00:00", dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC)),
        ("2026-12-06T03:00:00Z", dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC)),
        ("2026-12-06T04:00:00+01:00", dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC)),
        ("2026-12-06T03:00:00", dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC)),  # no zone: UTC
        ("yesterday", None),
        ("\x1b[2J", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_time_takes_only_iso_8601(text: str | None, expected: dt.datetime | None) -> None:
    assert parse_time(text) == expected


def test_when_is_local_time_with_its_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert when(dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC)) == "2026-12-06 04:00:00 CET"
        assert when(None) == "-"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (Problem("jobs.toml", "not valid TOML: x"), "jobs.toml: not valid TOML: x"),
        (Problem("jobs.toml", "unknown key", key="job"), "jobs.toml: job: unknown key"),
        (Problem("jobs.toml", "must be a table", "jobs.x"), "jobs.toml: [jobs.x]: must be a table"),
        (
            Problem("jobs.toml", "/srv does not exist", "jobs.x", "sources"),
            "jobs.toml: [jobs.x] sources: /srv does not exist",
        ),
    ],
)
def test_a_problem_reads_as_one_line_and_keeps_where_it_is(problem: Problem, text: str) -> None:
    assert str(problem) == text
    view = problem_view(problem)
    assert view["text"] == text
    assert (view["file"], view["table"], view["key"], view["message"]) == (
        problem.file,
        problem.table,
        problem.key,
        problem.message,
    )


RUN_KEYS = {
    "run_id", "job", "trigger", "result", "started", "finished", "seconds", "bytes_archived",
    "bytes_uploaded", "archive", "warnings", "error", "suggestion", "log", "destinations",
}  # fmt: skip


def test_a_run_still_running_has_every_key() -> None:
    started = dt.datetime(2026, 12, 6, 3, 0, 1, tzinfo=dt.UTC)
    view = run_view(Run("r1", "www", "schedule", started, "/var/log/x.jsonl"))
    assert set(view) == RUN_KEYS
    assert view["started"] == "2026-12-06T03:00:01Z"
    assert view["finished"] is None and view["seconds"] is None
    assert view["destinations"] == []


def test_a_finished_run_in_bytes_and_seconds() -> None:
    started = dt.datetime(2026, 12, 6, 3, 0, 1, tzinfo=dt.UTC)
    several = json.dumps([{"name": "a", "result": "success", "error": None}])
    run = Run(
        "r1",
        "www",
        "manual",
        started,
        "/l",
        result="success",
        finished=started + dt.timedelta(seconds=90.5),
        bytes_archived=3 << 30,
        bytes_uploaded=1 << 30,
        destinations=several,
    )
    view = run_view(run)
    assert (view["seconds"], view["bytes_archived"], view["bytes_uploaded"]) == (
        90.5,
        3 << 30,
        1 << 30,
    )
    assert view["finished"] == "2026-12-06T03:01:31Z"
    assert view["destinations"] == [{"name": "a", "result": "success", "error": None}]


def _manifest(backup_id: str, created: str) -> bytes:
    return json.dumps(
        {
            "job": "www",
            "created": created,
            "files": [{"name": f"{backup_id}.tar.zst", "size": 2048, "sha256": "0" * 64}],
            "contents": {"files": 7},
            "databases": [{"name": "wp"}],
        }
    ).encode()


def test_a_backup_in_bytes_with_its_time_in_utc() -> None:
    backup_id = "www-20261206T030001.000Z-abcdef"
    info = BackupInfo(
        backup_id, parse(_manifest(backup_id, "2026-12-06T04:00:01+01:00"), backup_id)
    )
    view = backup_view(info)
    assert view == {
        "backup_id": backup_id,
        "readable": True,
        "problem": None,
        "created": "2026-12-06T03:00:01Z",
        "bytes": 2048,
        "volumes": 1,
        "files": 7,
        "databases": ["wp"],
        "encrypted": False,
        "kind": "full",
        "parent": None,
    }


def test_a_server_given_time_that_is_not_one_is_null() -> None:
    backup_id = "www-20261206T030001.000Z-abcdef"
    info = BackupInfo(backup_id, parse(_manifest(backup_id, "\x1b]0;owned\x07"), backup_id))
    assert backup_view(info)["created"] is None


def test_an_unreadable_backup_keeps_every_key() -> None:
    view = backup_view(BackupInfo("www-x", None, "it is not JSON"))
    assert view["readable"] is False and view["problem"] == "it is not JSON"
    assert view["bytes"] is None and view["databases"] == [] and view["created"] is None
    assert len(view) == 11


def test_the_document_escapes_what_a_terminal_would_obey() -> None:
    text = document(error="\x1b[2J\x9b31m caf\u00e9 \udcff")
    assert text.isascii() and "\x1b" not in text and "\x9b" not in text
    assert json.loads(text) == {"format": 1, "error": "\x1b[2J\x9b31m caf\u00e9 \udcff"}


def test_the_summary_of_a_failed_run() -> None:
    started = dt.datetime(2026, 12, 6, 3, 0, 1, tzinfo=dt.UTC)
    result = RunResult(
        "www",
        "r1",
        Path("/l"),
        error="the data connection failed",
        suggestion="set passive = false",
        started=started,
        finished=started + dt.timedelta(seconds=16),
        seconds=16.0,
        destinations=[DestinationResult("a", "failed", "boom")],
    )
    view = summary(result)
    assert view["result"] == "failed" and view["backup_id"] is None
    assert (view["started"], view["finished"]) == ("2026-12-06T03:00:01Z", "2026-12-06T03:00:17Z")
    assert view["files"] is None and view["bytes_uploaded"] is None
    assert view["destinations"] == [{"name": "a", "result": "failed", "error": "boom"}]
