"""The run history and the job lock."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backupagent.state import (
    STOPPED_DURING_RUN,
    History,
    JobLocked,
    Run,
    job_lock,
    lock_held,
    lock_table,
    settled,
)

WRITER = """
import datetime as dt, sys
from pathlib import Path
from backupagent.state import History, Run
with History(Path(sys.argv[1])) as h:
    for i in range(300):
        run = Run(f"{sys.argv[2]}-{i}", sys.argv[2], "manual", dt.datetime.now(dt.UTC), "log")
        h.save(run)
        run.result = "success"
        run.finished = dt.datetime.now(dt.UTC)
        h.save(run)
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), job], env=env)
        for job in ("a", "b", "c")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    with History(tmp_path) as history:
        for job in ("a", "b", "c"):
            runs = history.runs(job, limit=1000)
            assert len(runs) == 300 and {r.result for r in runs} == {"success"}
        assert history.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_round_trip_and_interrupted_runs(tmp_path: Path) -> None:
    started = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
    with History(tmp_path) as history:
        history.save(Run("r1", "www", "schedule", started, "/log/r1", "running"))
        assert history.interrupted("www") == 1
        run = history.last("www")
        assert run is not None and run.result == "failed" and run.started == started
        assert "stopped during this run" in (run.error or "")
        assert history.interrupted("www") == 0


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with job_lock(tmp_path, "www"):
        with pytest.raises(JobLocked, match="already running"), job_lock(tmp_path, "www"):
            pass
        with job_lock(tmp_path, "other"):
            pass
    with job_lock(tmp_path, "www"):
        pass


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    with pytest.raises(JobLocked), job_lock(tmp_path, "www"):
        pass
    holder.kill()
    holder.wait()
    with job_lock(tmp_path, "www"):  # the kernel dropped the dead holder's lock
        pass


def test_manifest_made_only_for_a_published_backup_of_that_job(tmp_path: Path) -> None:
    started = dt.datetime(2026, 12, 6, 3, 0, tzinfo=dt.UTC)
    with History(tmp_path) as history:
        history.save(
            Run(
                "20261206T030000.000Z-aaaaaa",
                "www",
                "schedule",
                started,
                "log",
                result="success",
                manifest_sha256="ab" * 32,
            )
        )
        history.save(
            Run(
                "20261206T040000.000Z-bbbbbb",
                "www",
                "manual",
                started,
                "log",
                result="failed",
                manifest_sha256="cd" * 32,
            )
        )
        assert history.manifest_made("www", "www-20261206T030000.000Z-aaaaaa") == "ab" * 32
        assert history.manifest_made("www", "www-20261206T040000.000Z-bbbbbb") is None
        assert history.manifest_made("shop", "www-20261206T030000.000Z-aaaaaa") is None
        assert history.manifest_made("www", "www-20261206T050000.000Z-cccccc") is None


def _holder(state_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the job's lock until killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from backupagent.state import job_lock\n"
            "with job_lock(Path(sys.argv[1]), 'www'):\n    print('held', flush=True); time.sleep(60)",
            str(state_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_lock_held_reads_the_kernel_table_without_taking_the_lock(tmp_path: Path) -> None:
    assert not lock_held(tmp_path, "www", lock_table())  # never locked: no file
    holder = _holder(tmp_path)
    try:
        table = lock_table()
        assert lock_held(tmp_path, "www", table) and not lock_held(tmp_path, "other", table)
    finally:
        holder.kill()
        holder.wait()
    assert not lock_held(tmp_path, "www", lock_table())  # the file is left, its holder is gone
    with job_lock(tmp_path, "www"):
        assert lock_held(tmp_path, "www", lock_table())


def test_lock_held_matches_the_holder_pid_where_inodes_differ(tmp_path: Path) -> None:
    """Overlay filesystems: the kernel's table names the real inode, not the one stat sees."""
    with job_lock(tmp_path, "www"):
        table = f"1: FLOCK  ADVISORY  WRITE {os.getpid()} 00:2a:99 0 EOF\n"
        assert lock_held(tmp_path, "www", table)
        table = f"1: FLOCK  ADVISORY  WRITE {os.getpid() + 1} 00:2a:99 0 EOF\n"
        assert not lock_held(tmp_path, "www", table)
        assert lock_table(tmp_path / "missing") is None
        assert lock_held(tmp_path, "www", None)  # no table: trust the history


START = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("result", "held", "shown"),
    [
        ("running", False, "failed"),  # crashed: nobody holds the lock
        ("running", True, "running"),
        ("success", False, "success"),
        ("failed", True, "failed"),
    ],
)
def test_settled(result: str, held: bool, shown: str) -> None:
    run = settled(Run("r1", "www", "schedule", START, "/log/r1", result), held)
    assert run.result == shown
    assert (run.error == STOPPED_DURING_RUN) == (result != shown)
