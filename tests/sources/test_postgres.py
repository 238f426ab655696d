"""PostgreSQL dumps (custom format) against a real throwaway server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.logging import read_events

from ..actions.test_backup import download
from ..conftest import WriteConfig
from ..databases import Postgres
from .test_mysql import _members

PASSWORD = "pg:pa\\ss 'w\"rd"
TABLE_DIGEST = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t"


@pytest.fixture(scope="module")
def shop(postgres: Postgres) -> Postgres:
    escaped = PASSWORD.replace("'", "''")
    postgres.sql(f"CREATE ROLE backup LOGIN SUPERUSER PASSWORD '{escaped}';")
    postgres.sql("CREATE DATABASE shop ENCODING 'UTF8';")
    postgres.sql(
        "CREATE TABLE items (id serial PRIMARY KEY, name text, data bytea);"
        "INSERT INTO items (name, data) SELECT 'Grüße 🎉 #' || g, decode(md5(g::text), 'hex')"
        " FROM generate_series(1, 1000) g;",
        database="shop",
    )
    return postgres


def _entry(db: Postgres, name: str, password_file: Path) -> str:
    fields = {
        "type": "postgresql",
        "name": name,
        "host": str(db.socket_dir),
        "port": db.port,
        "user": "backup",
        "password_file": str(password_file),
    }
    inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    return f"databases = [{{ {inner} }}]"


def _password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "pg.pass"
    path.write_text(password + "\n")
    return path


def test_round_trip(
    shop: Postgres, write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    record = tmp_path / "argv.log"
    script = wrappers / "pg_dump"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n'
        f'echo "PGPASSWORD=${{PGPASSWORD:-}}" >> {record}\n'
        f'exec {shutil.which("pg_dump")} "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    monkeypatch.setenv("PGPASSWORD", "must-not-be-inherited")

    config = write_config(job=_entry(shop, "shop", _password_file(tmp_path, PASSWORD)))
    result = run_job(config, "www")
    assert result.outcome == "success", (result.error, result.suggestion)
    dump = _members(config, result)["databases/shop.pgdump"]
    assert dump.startswith(b"PGDMP")
    restored = tmp_path / "shop.pgdump"
    restored.write_bytes(dump)
    shop.sql("DROP DATABASE IF EXISTS shop_restored; CREATE DATABASE shop_restored;")
    shop.restore("shop_restored", restored)
    assert shop.sql(TABLE_DIGEST, "shop_restored") == shop.sql(TABLE_DIGEST, "shop")
    calls = record.read_text()
    assert PASSWORD not in calls and "PGPASSWORD=\n" in calls
    assert PASSWORD not in result.log_path.read_text()
    assert not list((tmp_path / "spool" / "www").iterdir())  # passfile and dumps removed


@pytest.mark.parametrize(
    ("name", "password", "category"),
    [("shop", "Wr0ng-pg-secret", "database_login"), ("nope", PASSWORD, "database_unknown")],
)
def test_failures(
    shop: Postgres,
    write_config: WriteConfig,
    tmp_path: Path,
    name: str,
    password: str,
    category: str,
) -> None:
    result = run_job(
        write_config(job=_entry(shop, name, _password_file(tmp_path, password))), "www"
    )
    assert result.exit_code == 1
    last = read_events(result.log_path)[-1]
    assert last["event"] == "suggestion" and last["category"] == category
    assert password not in result.log_path.read_text()


def test_restore_loads_a_postgres_dump_into_a_named_database(
    shop: Postgres, write_config: WriteConfig, tmp_path: Path
) -> None:
    from ..helpers import cli

    password_file = _password_file(tmp_path, PASSWORD)
    config = write_config(job=_entry(shop, "shop", password_file))
    assert run_job(config, "www").outcome == "success"
    connection = ["--db-socket", str(shop.socket_dir), "--db-port", str(shop.port)]
    connection += ["--db-user", "backup", "--db-password-file", str(password_file)]

    def restore(into: str, n: int) -> subprocess.CompletedProcess[str]:
        target = str(tmp_path / f"out{n}")
        args = ["restore", "www", "--to", target, "--load-database", "shop", "--into", into]
        return cli(config.path, *args, *connection)

    live = restore("shop", 1)
    assert live.returncode == 2
    assert "is the database job 'www' backs up" in live.stderr
    before = shop.sql(TABLE_DIGEST, database="shop")
    shop.sql('DROP DATABASE IF EXISTS "shop loaded";')
    loaded = restore("shop loaded", 2)  # created, its name quoted
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "loaded shop.pgdump into database shop loaded" in loaded.stdout
    assert shop.sql(TABLE_DIGEST, database="shop loaded") == before
    assert shop.sql(TABLE_DIGEST, database="shop") == before  # the live one untouched
    assert not list((config.agent.spool_dir / "www").glob("load-*"))  # no passfile left


def test_rows_are_counted_in_the_dumps_own_snapshot(
    shop: Postgres, write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row committed after the snapshot was taken (here: by a pg_dump wrapper, before
    the real one starts) is in neither the dump nor the manifest's count."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    script = wrappers / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f"PGPASSWORD='{shop.superuser_password}' {shutil.which('psql')} -X -q "
        f"-h {shop.socket_dir} -p {shop.port} -U postgres -d shop "
        "-c \"INSERT INTO items (name) VALUES ('late')\" || exit 9\n"
        f'exec {shutil.which("pg_dump")} "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    before = int(shop.sql("SELECT count(*) FROM items", "shop"))

    config = write_config(job=_entry(shop, "shop", _password_file(tmp_path, PASSWORD)))
    result = run_job(config, "www")
    assert result.outcome == "success", (result.error, result.suggestion)
    assert int(shop.sql("SELECT count(*) FROM items", "shop")) == before + 1
    manifest = json.loads(download(config, f"{result.backup_id}.manifest.json"))
    assert manifest["databases"][0]["rows"] == {"public.items": before}
    restored = tmp_path / "shop.pgdump"
    restored.write_bytes(_members(config, result)["databases/shop.pgdump"])
    shop.sql("DROP DATABASE IF EXISTS shop_snap; CREATE DATABASE shop_snap;")
    shop.restore("shop_snap", restored)
    assert int(shop.sql("SELECT count(*) FROM items", "shop_snap")) == before
    shop.sql("DELETE FROM items WHERE name = 'late'", "shop")


def test_without_a_shared_snapshot_the_dump_is_kept_uncounted(
    shop: Postgres, write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psql cannot hold the snapshot (here a wrapper refuses the session, the only call
    with -q): the backup is published, with a warning, and no counts."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    script = wrappers / "psql"
    script.write_text(
        '#!/bin/sh\ncase " $* " in *" -q "*) echo "no snapshot here" >&2; exit 3;; esac\n'
        f'exec {shutil.which("psql")} "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    config = write_config(job=_entry(shop, "shop", _password_file(tmp_path, PASSWORD)))
    result = run_job(config, "www")
    assert result.outcome == "warning", (result.error, result.warnings)
    assert any("could not be counted" in w and "no snapshot here" in w for w in result.warnings)
    manifest = json.loads(download(config, f"{result.backup_id}.manifest.json"))
    assert manifest["databases"][0]["rows"] is None
    assert _members(config, result)["databases/shop.pgdump"].startswith(b"PGDMP")
