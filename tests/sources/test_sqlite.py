"""SQLite: a consistent copy of a database that is being written to."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from backupagent.actions.backup import run_job

from ..conftest import WriteConfig
from .test_mysql import _members


def test_copy_of_a_live_database_is_consistent(write_config: WriteConfig, tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    setup = sqlite3.connect(path)
    setup.executescript(
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE debit (id INTEGER PRIMARY KEY, amount INTEGER);"
        "CREATE TABLE credit (id INTEGER PRIMARY KEY, amount INTEGER);"
    )
    setup.close()
    started, stop = threading.Event(), threading.Event()
    written = [0]

    def writer() -> None:
        """Each transaction adds one row to both tables: a torn copy would differ."""
        conn = sqlite3.connect(path, timeout=30)
        for i in range(200_000):
            if stop.is_set():
                break
            with conn:
                conn.execute("INSERT INTO debit (amount) VALUES (?)", (i,))
                conn.execute("INSERT INTO credit (amount) VALUES (?)", (i,))
            written[0] += 1
            if i == 200:
                started.set()
        started.set()
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert started.wait(60)
        config = write_config(
            job=f'databases = [{{ type = "sqlite", path = "{path}", name = "app" }}]'
        )
        result = run_job(config, "www")
    finally:
        stop.set()
        thread.join()
    assert result.outcome == "success", result.error
    copy = tmp_path / "restored.db"
    copy.write_bytes(_members(config, result)["databases/app.sqlite3"])
    conn = sqlite3.connect(copy)
    debit = conn.execute("SELECT COUNT(*), SUM(amount) FROM debit").fetchone()
    credit = conn.execute("SELECT COUNT(*), SUM(amount) FROM credit").fetchone()
    assert debit == credit and debit[0] > 200
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_missing_sqlite_file_fails_without_creating_it(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    path = tmp_path / "missing.db"
    result = run_job(
        write_config(job=f'databases = [{{ type = "sqlite", path = "{path}" }}]'), "www"
    )
    assert result.exit_code == 1
    assert "no database file" in result.suggestion
    assert "databases[0].path" in result.suggestion
    assert not path.exists()
