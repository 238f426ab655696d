"""backupagent against the hand-written pipeline an expert would use, on loopback.

    python bench/compare.py [--scale 1] [--pairs 5] [--also-4x] [--small-files N]

Builds a WordPress-like site (thousands of small PHP/JS files and incompressible
uploads) and a MariaDB database, starts a pyftpdlib server in its own process, then
alternates `backupagent run-job` with the reference

    tar -cf - SITE | zstd -3 -T0 | curl -T - ftp://...   and
    mariadb-dump ... | zstd -3 -T0 | curl -T - ftp://...

For each it prints the wall time, the ratio agent/reference per pair and the median,
the peak RSS of the whole process tree, the peak spool disk and the compressed size.
`--small-files N` instead archives N tiny files and compares files per second with
GNU tar. Needs root (or a user allowed to run mariadbd), tar, zstd and curl.
Figures, not tests: nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from tests.databases import MariaDB, start_mariadb

PHP = "<?php\n/** {n} */\nfunction wp_fn_{n}($a) {{ return apply_filters('x_{n}', $a . '{n}'); }}\n"


def make_site(root: Path, scale: int) -> None:
    """Small compressible files plus incompressible uploads, WordPress-shaped."""
    for i in range(3000 * scale):
        folder = root / "wp-includes" / f"part{i % 60}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.php").write_text(PHP.format(n=i) * (10 + i % 40))
    uploads = root / "wp-content" / "uploads"
    uploads.mkdir(parents=True)
    for i in range(30 * scale):
        (uploads / f"photo{i}.jpg").write_bytes(os.urandom(5 << 20))


def fill_database(db: MariaDB, rows: int) -> None:
    db.sql(f"""
        CREATE DATABASE wp CHARACTER SET utf8mb4;
        USE wp;
        CREATE TABLE wp_posts (ID BIGINT PRIMARY KEY AUTO_INCREMENT, post_content LONGTEXT,
                               post_title TEXT, guid VARCHAR(255));
        INSERT INTO wp_posts (post_content, post_title, guid)
        SELECT CONCAT('<p>Lorem ipsum ', seq, ' ', SHA2(seq, 512), ' dolor sit amet</p>'),
               CONCAT('Post ', seq), CONCAT('https://example.org/?p=', seq)
        FROM seq_1_to_{rows};
    """)


class Sampler:
    """Peak RSS of a process tree and peak size of a directory, sampled every 50 ms."""

    def __init__(self, pid: int, spool: Path | None) -> None:
        self.pid, self.spool = pid, spool
        self.rss = self.disk = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        tree = [self.pid]
        for pid in tree:
            tree.extend(children.get(pid, []))
        return tree

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            rss = 0
            for pid in self._tree():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            self.rss = max(self.rss, rss * os.sysconf("SC_PAGE_SIZE"))
            if self.spool is not None and self.spool.exists():
                size = sum(p.stat().st_size for p in self.spool.rglob("*") if p.is_file())
                self.disk = max(self.disk, size)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(argv: list[str], env: dict[str, str], spool: Path | None) -> tuple[float, int, int]:
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(proc.pid, spool)
    _, err = proc.communicate()
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return time.monotonic() - started, sampler.rss, sampler.disk


def compare(scale: int, pairs: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="ba-compare-"))
    servers = start_mariadb(base / "db")
    db = next(servers)
    ftp_root = base / "ftp"
    ftp_root.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ftpd = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyftpdlib",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "-d",
            str(ftp_root),
            "-u",
            "bench",
            "-P",
            "bench-pw",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        site = base / "site"
        make_site(site, scale)
        fill_database(db, 100_000 * scale)
        (base / "ftp.pass").write_text("bench-pw")
        (base / "db.pass").write_text(db.root_password)
        spool = base / "spool"
        config = base / "jobs.toml"
        config.write_text(f"""
[agent]
state_dir = "{base}/state"
log_dir = "{base}/log"
spool_dir = "{spool}"
[destinations.ftp]
type = "ftp"
host = "127.0.0.1"
port = {port}
user = "bench"
password_file = "{base}/ftp.pass"
directory = "/agent"
keep = 1
[jobs.bench]
destination = "ftp"
sources = ["{site}"]
databases = [{{ type = "mysql", name = "wp", socket = "{db.socket}", user = "root", password_file = "{base}/db.pass" }}]
""")
        url = f"ftp://bench:bench-pw@127.0.0.1:{port}/ref"
        reference = (
            "set -eo pipefail; "
            f"tar -C {site.parent} -cf - {site.name} | zstd -3 -T0 -q | "
            f"curl -sS --ftp-create-dirs -T - {url}/site.tar.zst; "
            f"mariadb-dump --no-defaults --socket={db.socket} --user=root --single-transaction "
            f"--quick --routines --triggers --events --hex-blob wp | zstd -3 -T0 -q | "
            f"curl -sS --ftp-create-dirs -T - {url}/db.sql.zst"
        )
        env = {
            **os.environ,
            "MYSQL_PWD": db.root_password,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        agent = [sys.executable, "-m", "backupagent", "--config", str(config), "run-job", "bench"]
        size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        print(
            f"scale {scale}: site {size / 2**20:.0f} MiB in "
            f"{sum(1 for _ in site.rglob('*.php'))} small files + uploads; "
            f"database {100_000 * scale} rows; {os.cpu_count()} cores"
        )
        ratios, agent_runs, ref_runs = [], [], []
        for pair in range(1, pairs + 1):
            a = timed(agent, env, spool)
            r = timed(["bash", "-c", reference], env, None)
            agent_runs.append(a)
            ref_runs.append(r)
            ratios.append(a[0] / r[0])
            print(
                f"  pair {pair}: agent {a[0]:6.2f} s  reference {r[0]:6.2f} s  "
                f"ratio {a[0] / r[0]:.2f}"
            )
        agent_size = sum(p.stat().st_size for p in (ftp_root / "agent").glob("*.tar.zst"))
        ref_size = sum(p.stat().st_size for p in (ftp_root / "ref").iterdir())
        print(
            f"  median: agent {statistics.median(x[0] for x in agent_runs):.2f} s, "
            f"reference {statistics.median(x[0] for x in ref_runs):.2f} s, "
            f"ratio {statistics.median(ratios):.2f}"
        )
        print(
            f"  peak RSS (process tree): agent {max(x[1] for x in agent_runs) / 2**20:.0f} MiB, "
            f"reference {max(x[1] for x in ref_runs) / 2**20:.0f} MiB"
        )
        print(
            f"  peak spool disk: agent {max(x[2] for x in agent_runs) / 2**20:.0f} MiB, "
            "reference 0 MiB (it streams)"
        )
        print(
            f"  compressed: agent {agent_size / 2**20:.1f} MiB, reference "
            f"{ref_size / 2**20:.1f} MiB"
        )
    finally:
        ftpd.terminate()
        ftpd.wait()
        servers.close()
        shutil.rmtree(base, ignore_errors=True)


def small_files(count: int) -> None:
    """Files per second archiving `count` tiny files: backupagent's archiver vs GNU tar."""
    base = Path(tempfile.mkdtemp(prefix="ba-small-"))
    try:
        tree = base / "tree"
        for i in range(count):
            folder = tree / f"d{i // 1000}"
            if i % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"f{i}.txt").write_text(f"small file {i}\n")
        subprocess.run(["sync"], check=False)
        child = (
            "import sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from backupagent.archive import write_archive\n"
            "from backupagent.sources.files import walk\n"
            "import io\n"
            "class Null(io.RawIOBase):\n"
            "    def writable(self): return True\n"
            "    def write(self, b): return len(b)\n"
            "write_archive(walk(__import__('pathlib').Path(sys.argv[2]), [], lambda p, r: None),"
            " Null(), level=3)\n"
        )
        repo = str(Path(__file__).resolve().parents[1])
        for label, argv in (
            (
                "GNU tar | zstd",
                ["bash", "-c", f"tar -cf - -C {base} tree | zstd -3 -T0 -q > /dev/null"],
            ),
            ("backupagent", [sys.executable, "-c", child, repo, str(tree)]),
        ):
            times = []
            for _ in range(3):
                started = time.monotonic()
                subprocess.run(argv, check=True)
                times.append(time.monotonic() - started)
            best = statistics.median(times)
            print(f"  {label:15} {best:6.2f} s  {count / best:9.0f} files/s (median of 3)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--also-4x", action="store_true", help="repeat at 4x the data")
    parser.add_argument("--small-files", type=int, default=0, metavar="N")
    args = parser.parse_args()
    missing = [t for t in ("tar", "zstd", "curl", "mariadb-dump") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)}")
    if args.small_files:
        print(f"{args.small_files} small files:")
        small_files(args.small_files)
        return
    compare(args.scale, args.pairs)
    if args.also_4x:
        compare(args.scale * 4, max(3, args.pairs // 2))


if __name__ == "__main__":
    main()
