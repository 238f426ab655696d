"""`run-job --dry-run`: the same walk as a run, the dumps it would make, each
destination reached and listed; nothing written on the server or on this host."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from backupagent.actions.backup import run_job
from backupagent.actions.dry_run import dry_run
from backupagent.ftpserver import LocalFtpServer

from ..conftest import WriteConfig
from ..databases import MariaDB, Postgres
from ..helpers import cli, snapshot


def _agent_directories(tmp_path: Path) -> list[Path]:
    return [tmp_path / d for d in ("state", "log", "spool")]


def test_counts_what_a_run_archives_and_writes_nothing(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path, site: Path
) -> None:
    config = write_config()
    server_before, site_before = snapshot(ftp_server.root), snapshot(site)
    plan = dry_run(config, "www")
    assert plan.ok, plan
    (source,) = plan.sources
    # the fixture after its excludes: 4 regular files, 2 links, 5 directories (its root,
    # wp-content, uploads, logs, empty)
    assert (source.files, source.symlinks, source.directories) == (4, 2, 5)
    excluded = {e.pattern: (e.files, e.directories, e.bytes) for e in source.excluded}
    assert excluded == {"wp-content/cache/": (1, 1, 7), "*.log": (1, 0, 5)}
    (dest,) = plan.destinations
    assert dest.error is None and dest.directory_exists is False and dest.backups == 0
    assert snapshot(ftp_server.root) == server_before  # no MKD, no upload
    assert snapshot(site) == site_before
    assert not any(d.exists() for d in _agent_directories(tmp_path))

    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    assert result.stats is not None
    assert result.stats.files == source.files
    assert result.stats.bytes_read == source.bytes
    again = dry_run(config, "www")
    (dest,) = again.destinations
    assert (dest.directory_exists, dest.backups, dest.newest) == (True, 1, result.backup_id)


def test_a_blocked_data_connection_fails_with_the_suggestion(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    ftp_server.block_passive()
    done = cli(config.path, "run-job", "www", "--dry-run")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Destination test (ftp" in done.stdout and "FAILED" in done.stdout
    assert "set passive = false" in done.stdout  # verified by a listing in active mode
    assert "The run would FAIL" in done.stdout
    assert not (ftp_server.root / "backups").exists()


def test_a_wrong_password_is_named_and_nothing_else_is_tried(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    plan = dry_run(write_config(password="wrong"), "www")
    (dest,) = plan.destinations
    assert not plan.ok and dest.directory_exists is None
    assert dest.suggestion is not None and "password" in dest.suggestion
    assert "set passive" not in dest.suggestion


def test_what_would_stop_the_dumps_and_the_sources(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    good = tmp_path / "app.db"
    sqlite3.connect(good).close()
    config = write_config(
        job=f'databases = [{{ type = "sqlite", path = "{good}" }}, '
        f'{{ type = "sqlite", path = "{tmp_path}/gone.db" }}, '
        '{ type = "mysql", name = "wp" }]'
    )
    os.environ["PATH"], saved = "/nonexistent", os.environ["PATH"]  # no dump tool found
    try:
        plan = dry_run(config, "www")
    finally:
        os.environ["PATH"] = saved
    problems = {d.name: d.problem for d in plan.dumps}
    assert problems["app"] is None
    assert problems["gone"] == f"no database file at {tmp_path}/gone.db"
    assert problems["wp"] == "mariadb-dump or mysqldump not found on PATH"
    assert not plan.ok

    config.path.write_text(config.path.read_text().replace("sources = [", '"sources" = ["/nope", '))
    done = cli(config.path, "run-job", "www", "--dry-run", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["format"] == 1 and report["ok"] is False
    assert report["problems"] == ["jobs.toml: [jobs.www] sources: /nope does not exist"]
    assert report["sources"][0]["files"] == 4
    assert {d["name"] for d in report["dumps"]} == {"app", "gone", "wp"}
    assert report["destinations"][0]["error"] is None


def test_the_database_servers_are_logged_into_as_the_dump_would(
    write_config: WriteConfig, mariadb: MariaDB, postgres: Postgres, tmp_path: Path
) -> None:
    """A wrong DB password fails the dry run, as it would fail the run half a second in;
    the right one, and a missing database, are told apart. Nothing is left in the spool."""
    mariadb.sql(
        "CREATE DATABASE IF NOT EXISTS dryshop; "
        "CREATE USER IF NOT EXISTS 'dry'@'localhost' IDENTIFIED BY 'right-pw'; "
        "GRANT ALL ON dryshop.* TO 'dry'@'localhost';"
    )
    good, bad = tmp_path / "good.pass", tmp_path / "bad.pass"
    good.write_text("right-pw\n")
    bad.write_text("wrong-pw\n")
    for secret in (good, bad):
        secret.chmod(0o600)

    def mysql(name: str, secret: Path) -> str:
        return (
            f'{{ type = "mysql", name = "{name}", user = "dry", '
            f'password_file = "{secret}", socket = "{mariadb.socket}" }}'
        )

    super_pass = tmp_path / "pg.pass"
    super_pass.write_text(postgres.superuser_password + "\n")
    super_pass.chmod(0o600)
    pg = (
        f'{{ type = "postgresql", name = "nodb_here", host = "{postgres.socket_dir}", '
        f'port = {postgres.port}, user = "postgres", password_file = "{super_pass}" }}'
    )
    config = write_config(
        job=f"databases = [{mysql('dryshop', good)}, {mysql('dryshop2', bad)}, {pg}]"
    )
    plan = dry_run(config, "www")
    first, second, third = plan.dumps
    assert first.problem is None
    assert second.problem is not None and second.problem.startswith("cannot log in")
    assert "Access denied for user 'dry'" in second.problem
    assert "password_file" in (second.advice or "")
    assert third.problem is not None and "nodb_here" in third.problem
    assert not plan.ok
    assert not any((tmp_path / "spool").rglob("*pgpass*"))
    shown = cli(config.path, "run-job", "www", "--dry-run")
    assert shown.returncode == 1
    assert "mariadb-dump: logged in" in shown.stdout or "mysqldump: logged in" in shown.stdout
    assert "cannot log in" in shown.stdout
