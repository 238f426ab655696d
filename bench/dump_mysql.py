"""Measure a MySQL job end to end: dump, archive and upload of a WordPress-sized database.

Run from the repository root as root (or a user who may run mariadbd):
    python bench/dump_mysql.py [ROWS]
It starts a throwaway MariaDB and FTP server, fills a wp_posts-like table with ROWS
rows (default 100000), runs a job, and prints the figures. Nothing is timed in tests.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backupagent.actions.backup import run_job
from backupagent.config import load_config
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import configure, read_events
from bench.compare import database_key, write_jobs
from tests.databases import start_mariadb


def main(rows: int) -> None:
    configure()
    base = Path(tempfile.mkdtemp(prefix="ba-bench-"))
    servers = start_mariadb(base / "db")
    db = next(servers)
    try:
        started = time.monotonic()
        db.sql(f"""
            CREATE DATABASE wp CHARACTER SET utf8mb4;
            USE wp;
            CREATE TABLE wp_posts (ID BIGINT PRIMARY KEY AUTO_INCREMENT, post_author BIGINT,
              post_date DATETIME, post_content LONGTEXT, post_title TEXT, post_status VARCHAR(20),
              guid VARCHAR(255));
            INSERT INTO wp_posts (post_author, post_date, post_content, post_title, post_status, guid)
            SELECT seq % 17, NOW() - INTERVAL seq MINUTE,
                   CONCAT('<p>Lorem ipsum dolor sit amet ', seq, ' ', SHA2(seq, 512), ' ',
                          MD5(seq), ' consectetur adipiscing elit ', SHA2(seq * 7, 512),
                          '</p>'),
                   CONCAT('Post number ', seq), 'publish', CONCAT('https://example.org/?p=', seq)
            FROM seq_1_to_{rows};  -- MariaDB's Sequence engine
            ANALYZE TABLE wp_posts;
        """)
        size = db.sql(
            "SELECT SUM(data_length + index_length) FROM information_schema.tables "
            "WHERE table_schema = 'wp'"
        ).strip()
        print(
            f"filled {rows} rows in {time.monotonic() - started:.1f}s; InnoDB size {int(size) / 2**20:.1f} MiB"
        )
        (base / "ftp").mkdir()
        with LocalFtpServer(base / "ftp") as ftp:
            (base / "www").mkdir()
            database = database_key(base, db)
            write_jobs(base, ftp.port, base / "www", 1, database, ftp.user, ftp.password)
            result = run_job(load_config(base / "jobs.toml"), "bench")
        events = read_events(result.log_path)
        dumped = next(e for e in events if e["event"] == "database dumped")
        assert result.stats is not None
        print(f"result: {result.outcome}")
        print(
            f"dump: {dumped['bytes'] / 2**20:.1f} MiB of SQL in {dumped['seconds']:.2f}s "
            f"({dumped['bytes'] / 2**20 / dumped['seconds']:.0f} MiB/s)"
        )
        print(f"archive: {result.stats.archive_bytes / 2**20:.1f} MiB (.tar.zst, level 3)")
        print(f"whole run (dump + archive + upload + manifest): {result.seconds:.2f}s")
    finally:
        servers.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
