"""Measure a MySQL job end to end: dump, archive and upload of a WordPress-sized database.

Run from the repository root as root (or a user who may run mariadbd):
    python bench/dump_mysql.py [ROWS]
It starts a throwaway MariaDB and FTP server, fills a wp_posts-like table with ROWS
rows (default 100000), runs the job ROUNDS times counting rows per table (as shipped)
alternated with a reference run that does not count them, and prints the medians and
their ratio. Nothing is timed in tests.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backupagent.actions.backup import run_job
from backupagent.config import load_config
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import configure, read_events
from backupagent.sources import databases
from bench.compare import database_key, write_jobs
from tests.databases import start_mariadb

ROUNDS = 5


class _NoCount(databases.MysqlRows):
    """The reference: the dump as it was before rows were counted."""

    def write(self, data: bytes) -> None:
        pass


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
            config = load_config(base / "jobs.toml")
            # alternated in this process: counting rows (as shipped) and a reference run
            # that does not count them (MysqlRows replaced by a no-op)
            timings: dict[str, list[float]] = {"counting rows": [], "reference (no count)": []}
            for _ in range(ROUNDS):
                for label in timings:
                    counter = databases.MysqlRows if label == "counting rows" else _NoCount
                    with mock.patch.object(databases, "MysqlRows", counter):
                        result = run_job(config, "bench")
                    assert result.outcome == "success", result.error
                    events = read_events(result.log_path)
                    dumped = next(e for e in events if e["event"] == "database dumped")
                    timings[label].append(dumped["seconds"])
            mib = dumped["bytes"] / 2**20
            for label, seconds in timings.items():
                best = statistics.median(seconds)
                print(
                    f"{label}: {mib:.1f} MiB of SQL in {best:.2f}s median of {ROUNDS} "
                    f"({mib / best:.0f} MiB/s)"
                )
            ratio = statistics.median(timings["counting rows"]) / statistics.median(
                timings["reference (no count)"]
            )
            print(f"dump time, counting rows / reference: {ratio:.2f}")
            print(f"archive: {result.stats.archive_bytes / 2**20:.1f} MiB (.tar.zst, level 3)")
    finally:
        servers.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
