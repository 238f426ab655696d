"""SQLite: a consistent copy of a database that is being written to."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from backupagent.actions.backup import run_job
from backupagent.config import Config
from backupagent.outcome import RunResult
from backupagent.state import History

from ..actions.test_backup import download
from ..conftest import WriteConfig, require_system
from ..helpers import snapshot
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


# --- a directory the agent may only read (the unit's ProtectSystem=strict) -------------

RUN_READ_ONLY = """mount --bind -o ro "$1" "$1" && shift && exec "$@" """


def _run_with_read_only(directory: Path, config: Config) -> subprocess.CompletedProcess[str]:
    """`run-job www` in a mount namespace of its own where `directory` is a read-only
    bind mount, as the shipped unit's ProtectSystem=strict makes /var/www and /srv."""
    require_system(os.geteuid() == 0 and shutil.which("unshare") is not None, "needs root")
    agent = [sys.executable, "-m", "backupagent", "-c", str(config.path), "run-job", "www"]
    namespace = ["unshare", "--mount", "--propagation", "private"]
    return subprocess.run(
        [*namespace, "sh", "-c", RUN_READ_ONLY, "sh", str(directory), *agent],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wal_database(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()  # the last connection: checkpointed, -wal and -shm removed


def _dumped_rows(config: Config, tmp_path: Path) -> int:
    with History(config.agent.state_dir) as history:
        run = history.last("www")
    assert run is not None and run.result == "success", run
    copy = tmp_path / "copy.db"
    members = _members(config, RunResult("www", run.run_id, Path(), backup_id=f"www-{run.run_id}"))
    copy.write_bytes(members["databases/app.sqlite3"])
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])
    finally:
        conn.close()
    manifest = json.loads(download(config, f"www-{run.run_id}.manifest.json"))
    assert manifest["databases"][0]["rows"] == {"t": count}  # counted in the copy
    return count


def test_wal_database_no_process_has_open_in_a_read_only_directory(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """SQLite cannot make the -shm file there: the file alone is read, as immutable."""
    data = tmp_path / "app-data"
    data.mkdir()
    _wal_database(data / "app.db", 500)
    before = snapshot(data)
    config = write_config(job=f'databases = [{{ type = "sqlite", path = "{data}/app.db" }}]')
    done = _run_with_read_only(data, config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _dumped_rows(config, tmp_path) == 500
    assert snapshot(data) == before  # no -shm left, nothing touched


def test_wal_database_open_in_the_application_in_a_read_only_directory(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """The application holds it open, with committed rows still only in its -wal file:
    the copy has them."""
    data = tmp_path / "app-data"
    data.mkdir()
    _wal_database(data / "app.db", 500)
    app = sqlite3.connect(data / "app.db")
    try:
        app.execute("PRAGMA wal_autocheckpoint=0")  # the new rows stay in the log
        app.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(250)])
        app.commit()
        assert (data / "app.db-wal").stat().st_size > 0
        config = write_config(job=f'databases = [{{ type = "sqlite", path = "{data}/app.db" }}]')
        done = _run_with_read_only(data, config)
    finally:
        app.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert _dumped_rows(config, tmp_path) == 750


def test_wal_with_changes_and_no_shm_in_a_read_only_directory_names_the_fix(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """A log left by a crashed application cannot be read without its -shm file: the
    file alone would lose its rows, so the run fails and says what to allow."""
    data = tmp_path / "app-data"
    data.mkdir()
    _wal_database(data / "app.db", 10)
    crash = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute('INSERT INTO t VALUES (1)'); c.commit(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(data / "app.db")], check=True)
    (data / "app.db-shm").unlink()
    assert (data / "app.db-wal").stat().st_size > 0
    before = snapshot(data)
    config = write_config(job=f'databases = [{{ type = "sqlite", path = "{data}/app.db" }}]')
    done = _run_with_read_only(data, config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot read it without writing in its directory" in done.stdout
    assert f"ReadWritePaths={data}" in done.stdout
    assert "databases[0].path" in done.stdout
    assert snapshot(data) == before
