"""Console lines: in the journal each carries its priority and no timestamp of its own."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from backupagent import logging as agent_logging
from backupagent.ftpserver import LocalFtpServer

from .conftest import WriteConfig

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def _journal_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.fixture
def console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A console stream that systemd's JOURNAL_STREAM names, as under the unit."""
    path = tmp_path / "stderr"
    with path.open("w+") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_of(path))
        agent_logging.configure(verbose=True, stream=stream)
        yield stream
    agent_logging.configure()  # back to plain stderr for the tests after this one


def _lines(stream) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def test_journal_lines_start_with_their_priority_and_have_no_timestamp(console) -> None:
    log = structlog.get_logger("backupagent.test")
    log.debug("a detail")
    log.info("run started", job="www")
    log.warning("file skipped", path="/srv/x")
    log.error("run failed", error="550 Permission denied")
    lines = _lines(console)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    assert "run failed" in lines[3] and "550 Permission denied" in lines[3]
    assert not any(STAMP.search(line) for line in lines)


def test_every_line_of_a_traceback_carries_the_priority(console) -> None:
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        structlog.get_logger("backupagent.test").exception("crashed")
    lines = _lines(console)
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)


def test_library_records_go_through_the_same_lines(console) -> None:
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %r was missed", "www")
    logging.getLogger("apscheduler.executors").info("chatter")  # below WARNING: not shown
    assert _lines(console) == [
        "<4>[warning  ] apscheduler.scheduler: Run time of job 'www' was missed"
    ]


def test_a_stream_that_is_not_the_journal_gets_plain_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JOURNAL_STREAM is inherited; stderr redirected to a file is no longer the journal."""
    monkeypatch.setenv("JOURNAL_STREAM", _journal_of(tmp_path))  # another file's identity
    with (tmp_path / "stderr").open("w+") as stream:
        try:
            agent_logging.configure(stream=stream)
            structlog.get_logger("backupagent.test").error("run failed")
            logging.getLogger("apscheduler.scheduler").warning("missed")
        finally:
            agent_logging.configure()
        lines = _lines(stream)
    assert len(lines) == 2 and not any(line.startswith("<") for line in lines)
    assert all(STAMP.match(line) for line in lines)


def test_a_failed_run_under_systemd_is_found_by_priority(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """What `journalctl -p err` would list: the failure, at <3>; progress at <6>."""
    config = write_config()
    ftp_server.block_passive()
    stderr = tmp_path / "journal"
    with stderr.open("w") as handle:
        result = subprocess.run(
            [sys.executable, "-m", "backupagent", "--config", str(config.path), "run-job", "www"],
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            env={**os.environ, "JOURNAL_STREAM": _journal_of(stderr)},
            timeout=300,
        )
    assert result.returncode == 1
    lines = stderr.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    errors = [line for line in lines if line.startswith("<3>")]
    assert any("run failed" in line for line in errors)
    assert any(line.startswith("<6>") and "run started" in line for line in lines)
    assert not any(STAMP.search(line) for line in lines)
