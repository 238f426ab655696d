"""MySQL/MariaDB dumps against a real throwaway MariaDB server."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import read_events
from backupagent.outcome import RunResult

from ..actions.test_backup import download, download_archive
from ..conftest import WriteConfig, require_system
from ..databases import MariaDB
from ..helpers import decompress

PASSWORD = "tri\"cky 'pa$$\\word #1"
DUMP_TOOLS = ("mariadb-dump", "mariadb")


@pytest.fixture(scope="module")
def shop(mariadb: MariaDB) -> MariaDB:
    """Databases with utf8mb4 text, blobs, a trigger and a routine; a backup user."""
    escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    mariadb.sql(f"""
        CREATE DATABASE shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
        USE shop;
        CREATE TABLE notes (id INT PRIMARY KEY AUTO_INCREMENT, body MEDIUMTEXT, created DATETIME);
        CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB);
        CREATE TABLE audit (note_id INT);
        CREATE TRIGGER notes_ai AFTER INSERT ON notes FOR EACH ROW INSERT INTO audit VALUES (NEW.id);
        CREATE PROCEDURE count_notes() SELECT COUNT(*) FROM notes;
        INSERT INTO notes (body, created) VALUES
            ('Grüße aus Köln 🎉 — 漢字 and a quote \\' and backslash \\\\', NOW()),
            (REPEAT('x', 70000), '2026-01-01 00:00:00'),
            (NULL, NULL);
        INSERT INTO blobs VALUES (1, RANDOM_BYTES(1024)), (2, UNHEX('00FF00FF0D0A1A')), (3, '');
        CREATE DATABASE wpsite CHARACTER SET utf8mb4;
        CREATE TABLE wpsite.wp_options (option_name VARCHAR(191) PRIMARY KEY, option_value LONGTEXT);
        CREATE TABLE wpsite.wp_posts (ID BIGINT PRIMARY KEY, post_title TEXT);
        CREATE TABLE wpsite.other_posts (ID BIGINT PRIMARY KEY, post_title TEXT);
        INSERT INTO wpsite.wp_options VALUES ('siteurl', 'https://example.org');
        INSERT INTO wpsite.wp_posts VALUES (1, 'Hello world!');
        INSERT INTO wpsite.other_posts VALUES (1, 'another site');
        CREATE USER 'backup'@'localhost' IDENTIFIED BY '{escaped}';
        GRANT ALL PRIVILEGES ON *.* TO 'backup'@'localhost';
    """)
    return mariadb


def wrap_tool(tool: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put a bash script named `tool` first on PATH; `{real}` in `body` is the real tool."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir(exist_ok=True)
    real = shutil.which(tool)
    script = wrappers / tool
    script.write_text("#!/bin/bash\n" + body.replace("{real}", str(real)) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    if not os.environ["PATH"].startswith(str(wrappers)):
        monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")


def _entry(db: MariaDB, name: str, password_file: Path, **extra: str) -> str:
    fields = {
        "type": "mysql",
        "name": name,
        "socket": str(db.socket),
        "user": "backup",
        "password_file": str(password_file),
        **extra,
    }
    inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    return f"databases = [{{ {inner} }}]"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "db.pass"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def _members(config, result: RunResult) -> dict[str, bytes]:
    data = download_archive(config, result.backup_id)
    raw = decompress(data)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _checksums(db: MariaDB, database: str) -> dict[str, str]:
    tables = db.sql("SHOW TABLES", database).split()
    rows = db.sql(f"CHECKSUM TABLE {', '.join(tables)}", database).splitlines()
    return {row.split("\t")[0].split(".")[1]: row.split("\t")[1] for row in rows}


def test_dump_round_trip_checksums_match(
    shop: MariaDB, write_config: WriteConfig, ftp_server: LocalFtpServer, password_file: Path
) -> None:
    config = write_config(job=_entry(shop, "shop", password_file))
    result = run_job(config, "www")
    assert result.outcome == "success", (result.error, result.warnings)
    members = _members(config, result)
    dump = members["databases/shop.sql"]
    assert dump.rstrip().splitlines()[-1].startswith(b"-- Dump completed")
    meta = json.loads(download(config, f"{result.backup_id}.manifest.json"))
    entry = meta["databases"][0]
    assert entry["member"] == "databases/shop.sql" and entry["size"] == len(dump)
    assert entry["sha256"] == __import__("hashlib").sha256(dump).hexdigest()
    assert entry["tables"] == ["audit", "blobs", "notes"]
    assert entry["rows"] == {"audit": 3, "blobs": 3, "notes": 3}  # counted in the SQL

    shop.sql(
        "DROP DATABASE IF EXISTS shop_restored; CREATE DATABASE shop_restored CHARACTER SET utf8mb4;"
    )
    shop.load("shop_restored", dump)
    assert _checksums(shop, "shop_restored") == _checksums(shop, "shop")
    assert "notes_ai" in shop.sql("SHOW TRIGGERS", "shop_restored")
    assert "count_notes" in shop.sql("SHOW PROCEDURE STATUS WHERE Db = 'shop_restored'")
    assert PASSWORD not in result.log_path.read_text()
    assert PASSWORD.encode() not in download(config, f"{result.backup_id}.manifest.json")


def test_archive_with_a_dump_unpacks_with_zstd_and_gnu_tar(
    shop: MariaDB,
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    password_file: Path,
    tmp_path: Path,
) -> None:
    """The dump is its own zstd frame inside the archive: the standard tools join them."""
    require_system(
        shutil.which("zstd") is not None, "the zstd tool is missing (apt-get install zstd)"
    )
    config = write_config(job=_entry(shop, "shop", password_file))
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    archive = tmp_path / "backup.tar.zst"
    archive.write_bytes(download_archive(config, result.backup_id))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(f"zstd -dc {archive} | tar -xf - -C {out}", shell=True, check=True)
    assert (out / "databases/shop.sql").read_bytes() == _members(config, result)[
        "databases/shop.sql"
    ]
    assert (out / "files").is_dir()


def test_password_never_on_the_command_line(
    shop: MariaDB,
    write_config: WriteConfig,
    password_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wrap the tools: each records its argv before running the real one."""
    record = tmp_path / "argv.log"
    for tool in DUMP_TOOLS:
        wrap_tool(
            tool, f'printf "%s\\n" "$0 $*" >> {record}\nexec {{real}} "$@"', tmp_path, monkeypatch
        )
    result = run_job(write_config(job=_entry(shop, "shop", password_file)), "www")
    assert result.outcome == "success", result.error
    calls = record.read_text().splitlines()
    assert any("mariadb-dump --defaults-extra-file=/dev/fd/" in c for c in calls)
    assert all(PASSWORD not in c and "--password" not in c and " -p" not in c for c in calls), calls


@pytest.mark.parametrize(
    ("name", "password", "category", "where"),
    [
        (
            "shop",
            "wrong-password",
            "database_login",
            "databases[0].user, databases[0].password_file",
        ),
        ("no_such_db", PASSWORD, "database_unknown", "databases[0].name"),
    ],
)
def test_failures_are_explained_and_publish_nothing(
    shop: MariaDB,
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
    name: str,
    password: str,
    category: str,
    where: str,
) -> None:
    pw = tmp_path / "given.pass"
    pw.write_text(password)
    result = run_job(write_config(job=_entry(shop, name, pw)), "www")
    assert result.exit_code == 1
    # files are archived and uploaded while the dump runs: what was uploaded is removed
    assert [p for p in ftp_server.root.rglob("*") if p.is_file()] == []
    last = read_events(result.log_path)[-1]
    assert last["event"] == "suggestion" and last["category"] == category
    assert f"under [jobs.www]: {where}" in result.suggestion
    assert "set passive" not in result.suggestion
    assert password not in result.log_path.read_text()
    assert not list((tmp_path / "spool" / "www").iterdir())


def test_dump_without_completion_marker_fails(
    shop: MariaDB,
    write_config: WriteConfig,
    password_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dump tool that exits 0 but stops early (as if its output were cut) is not accepted."""
    wrap_tool("mariadb-dump", '{real} "$@" | head -c 2000\nexit 0', tmp_path, monkeypatch)
    result = run_job(write_config(job=_entry(shop, "shop", password_file)), "www")
    assert result.exit_code == 1
    assert read_events(result.log_path)[-1]["category"] == "dump_incomplete"


def test_missing_dump_tool_names_the_package(
    write_config: WriteConfig, password_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = run_job(write_config(job=_entry_for_missing(password_file)), "www")
    assert result.exit_code == 1
    assert "apt-get install mariadb-client" in result.suggestion


def _entry_for_missing(password_file: Path) -> str:
    return f'databases = [{{ type = "mysql", name = "x", password_file = "{password_file}" }}]'


def test_all_dumps_every_non_system_database(
    shop: MariaDB, write_config: WriteConfig, password_file: Path
) -> None:
    config = write_config(job=_entry(shop, "all", password_file))
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    names = {n for n in _members(config, result) if n.startswith("databases/")}
    assert {"databases/shop.sql", "databases/wpsite.sql"} <= names
    assert not names & {
        "databases/mysql.sql",
        "databases/sys.sql",
        "databases/information_schema.sql",
        "databases/performance_schema.sql",
    }


def test_wordpress_job(shop: MariaDB, write_config: WriteConfig, tmp_path: Path) -> None:
    root = tmp_path / "wp"
    (root / "wp-includes").mkdir(parents=True)
    (root / "wp-content" / "cache").mkdir(parents=True)
    (root / "wp-content" / "cache" / "page.html").write_text("cached")
    (root / "wp-content" / "updraft").mkdir()
    (root / "wp-content" / "updraft" / "backup.zip").write_text("another plugin's backup")
    (root / "index.php").write_text("<?php\n")
    (root / "wp-includes" / "version.php").write_text("<?php\n$wp_version = '6.8.1';\n")
    db_password = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    (root / "wp-config.php").write_text(
        "<?php\n"
        "define( 'DB_NAME', 'wpsite' );\n"
        "define( 'DB_USER', 'backup' );\n"
        f"define( 'DB_PASSWORD', '{db_password}' );\n"
        f"define( 'DB_HOST', 'localhost:{shop.socket}' );\n"
        "$table_prefix = 'wp_';\n"
    )
    config = write_config(job=f'wordpress = "{root}"\nwordpress_tables = "prefix"')
    result = run_job(config, "www")
    assert result.outcome == "success", (result.error, result.suggestion)
    members = _members(config, result)
    prefix = "files/" + str(root).lstrip("/")
    assert f"{prefix}/index.php" in members
    assert f"{prefix}/wp-content/cache/page.html" not in members
    assert f"{prefix}/wp-content/updraft/backup.zip" not in members
    dump = members["databases/wpsite.sql"]
    assert b"CREATE TABLE `wp_posts`" in dump and b"other_posts" not in dump
    meta = json.loads(download(config, f"{result.backup_id}.manifest.json"))
    assert meta["wordpress"] == {
        "root": str(root),
        "version": "6.8.1",
        "table_prefix": "wp_",
        "database": "wpsite",
        "tables": "prefix",
    }
    assert meta["databases"][0]["tables"] == ["wp_options", "wp_posts"]
    assert PASSWORD not in result.log_path.read_text()

    # a drill reaches the server through wp-config.php's settings, and leaves it as it was
    from backupagent.actions.drill import drill

    databases = shop.sql("SHOW DATABASES")
    drilled = drill(config, "www")
    assert drilled.ok, drilled.message
    (checked,) = drilled.dumps
    assert (checked.member, checked.tables, checked.rows) == ("databases/wpsite.sql", 2, 2)
    assert shop.sql("SHOW DATABASES") == databases


def test_wordpress_wrong_password_points_at_wp_config(
    shop: MariaDB, write_config: WriteConfig, tmp_path: Path
) -> None:
    root = tmp_path / "wp"
    root.mkdir()
    (root / "wp-config.php").write_text(
        "<?php define('DB_NAME','wpsite'); define('DB_USER','backup');"
        f" define('DB_PASSWORD','nope'); define('DB_HOST','localhost:{shop.socket}');"
    )
    result = run_job(write_config(job=f'wordpress = "{root}"'), "www")
    assert result.exit_code == 1
    assert f"Where: in {root / 'wp-config.php'}: DB_USER, DB_PASSWORD" in result.suggestion


def test_all_with_nothing_visible_fails(
    shop: MariaDB, write_config: WriteConfig, tmp_path: Path
) -> None:
    shop.sql("CREATE USER IF NOT EXISTS 'nobody'@'localhost' IDENTIFIED BY 'nobody-pw';")
    pw = tmp_path / "nobody.pass"
    pw.write_text("nobody-pw")
    entry = _entry(shop, "all", pw).replace('"backup"', '"nobody"')
    result = run_job(write_config(job=entry), "www")
    assert result.exit_code == 1
    assert "lists no database to dump" in result.suggestion


def test_restore_loads_the_dump_into_a_named_database(
    shop: MariaDB, write_config: WriteConfig, password_file: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    config = write_config(job=_entry(shop, "shop", password_file))
    assert run_job(config, "www").outcome == "success"

    def restore(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "backupagent",
            "--config",
            str(config.path),
            "restore",
            "www",
            "--to",
            str(tmp_path / f"out-{len(extra)}-{extra[-1] if extra else ''}"),
            "--load-database",
            "shop",
            "--db-socket",
            str(shop.socket),
            "--db-user",
            "backup",
            "--db-password-file",
            str(password_file),
            *extra,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    live = restore("--into", "shop")
    assert live.returncode == 2
    assert "is the database job 'www' backs up" in live.stderr
    shop.sql("DROP DATABASE IF EXISTS shop_loaded;")
    loaded = restore("--into", "shop_loaded")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "loaded shop.sql into database shop_loaded" in loaded.stdout
    assert _checksums(shop, "shop_loaded") == _checksums(shop, "shop")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b"/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`localhost`*/ /*!50106 EVENT `ev` ON "
            b"SCHEDULE EVERY 1 SECOND STARTS '2026-12-06 08:03:45' ON COMPLETION NOT PRESERVE "
            b"ENABLE DO INSERT INTO d.t VALUES (1) \n",
            b"/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`localhost`*/ /*!50106 EVENT `ev` ON "
            b"SCHEDULE EVERY 1 SECOND STARTS '2026-12-06 08:03:45' ON COMPLETION NOT PRESERVE "
            b"DISABLE DO INSERT INTO d.t VALUES (1) \n",
        ),
        (
            b"/*!50106 CREATE*/ /*!50106 EVENT `e` ON SCHEDULE AT '2030-01-01 00:00:00' ON "
            b"COMPLETION PRESERVE ENABLE DO SELECT ' ON COMPLETION PRESERVE ENABLE DO '\n",
            b"/*!50106 CREATE*/ /*!50106 EVENT `e` ON SCHEDULE AT '2030-01-01 00:00:00' ON "
            b"COMPLETION PRESERVE DISABLE DO SELECT ' ON COMPLETION PRESERVE ENABLE DO '\n",
        ),
        (  # disabled already, and a row that only looks like it: unchanged
            b"/*!50106 CREATE*/ /*!50106 EVENT `e` ON SCHEDULE EVERY 1 DAY ON COMPLETION "
            b"PRESERVE DISABLE DO SELECT 1\n",
            None,
        ),
        (b"(1,'/*!50106 CREATE*/ EVENT x ON COMPLETION PRESERVE ENABLE DO '),\n", None),
    ],
)
def test_disable_event(line: bytes, expected: bytes | None) -> None:
    from backupagent.sources.databases import disable_event

    assert disable_event(line) == (line if expected is None else expected)
