"""backupagent against the hand-written pipeline an expert would use, on loopback.

    python bench/compare.py [--site wordpress|synthetic] [--scale 1] [--pairs 7]
                            [--also-4x] [--small-files N]

Builds bench/site.py's site (by default the real-looking WordPress tree, 555 MiB in
11,952 files per unit of --scale) and a MariaDB database (WordPress's own tables with
20,000 posts per unit; `--site synthetic`: one table of 200,000 rows), starts vsftpd on
127.0.0.1 (when installed and run as root; else pyftpdlib in its own process), then
alternates `backupagent run-job` with the reference

    tar -cf - SITE | zstd -3 -T0 | curl -T - ftp://...   and
    mariadb-dump ... | zstd -3 -T0 | curl -T - ftp://...

After a `sync` and one unmeasured run of each, it prints for each pair the wall
times and their ratio (agent/reference), then the median, the peak RSS of the whole
process tree, the peak spool disk and the compressed size.
`--small-files N` instead archives N tiny files and compares files per second with
GNU tar, alternating runs. Needs root (or a user allowed to run mariadbd), tar,
zstd and curl.
Figures, not tests: nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
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
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.site import POSTS, make_site, wordpress_sql
from tests.databases import MariaDB, start_mariadb

ROWS = 200_000  # per unit of --scale

VSFTPD_CONF = """\
listen=YES
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
pam_service_name=vsftpd
secure_chroot_dir={empty}
seccomp_sandbox=NO
pasv_enable=YES
pasv_min_port={pasv}
pasv_max_port={pasv_end}
userlist_enable=NO
chroot_local_user=YES
allow_writeable_chroot=YES
xferlog_enable=YES
xferlog_std_format=YES
xferlog_file={xferlog}
"""
BENCH_USER, BENCH_PASSWORD = "babench", "bench-pw"


@contextlib.contextmanager
def ftp_server(root: Path, port: int) -> Iterator[str]:
    """vsftpd when it can run here (root, vsftpd, PAM), else pyftpdlib; yields its name.

    Both serve `root` on 127.0.0.1:`port` to BENCH_USER. vsftpd needs a system user:
    one is created for the run and removed after it.
    """
    usable = (
        os.geteuid() == 0
        and shutil.which("vsftpd")
        and shutil.which("useradd")
        and Path("/etc/pam.d/vsftpd").exists()
    )
    if not usable:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(port), "-w"),
                *("-d", str(root), "-u", BENCH_USER, "-P", BENCH_PASSWORD),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(port, server)
            yield "pyftpdlib"
        finally:
            server.terminate()
            server.wait()
        return
    subprocess.run(["userdel", BENCH_USER], check=False, capture_output=True)  # an old run's
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(root), "--shell", "/bin/sh", BENCH_USER],
        check=True,
    )
    try:
        subprocess.run(
            ["chpasswd"], input=f"{BENCH_USER}:{BENCH_PASSWORD}\n", text=True, check=True
        )
        shutil.chown(root, BENCH_USER, BENCH_USER)
        empty = root.parent / "vsftpd-empty"
        empty.mkdir()
        conf = root.parent / "vsftpd.conf"
        conf.write_text(
            VSFTPD_CONF.format(
                port=port,
                empty=empty,
                pasv=port + 1,
                pasv_end=port + 50,
                xferlog=transfers_log(root),
            )
        )
        server = subprocess.Popen(["vsftpd", str(conf)], stderr=subprocess.PIPE)
        try:
            _wait_for_port(port, server)
            yield "vsftpd"
        finally:
            server.kill()
            server.wait()
    finally:
        subprocess.run(["userdel", BENCH_USER], check=False)


def transfers_log(root: Path) -> Path:
    """Where vsftpd logs each transfer (xferlog format: the bytes it sent, by name)."""
    return root.parent / "xferlog"


def sent_since(root: Path, mark: int) -> list[tuple[str, int]]:
    """(file name, bytes) of each download the server logged past byte `mark` of its
    transfer log; bench/restore.py counts what a command made the server send."""
    log = transfers_log(root)
    if not log.exists():
        return []
    with log.open("rb") as handle:
        handle.seek(mark)
        lines = handle.read().decode(errors="replace").splitlines()
    sent = []
    for line in lines:  # date (5 fields), seconds, host, bytes, name, type, flag, direction
        fields = line.split()
        if len(fields) > 11 and fields[11] == "o":
            sent.append((Path(fields[8]).name, int(fields[7])))
    return sent


def _wait_for_port(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the FTP server exited ({server.returncode})")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("the FTP server did not start listening")


def fill_database(db: MariaDB, scale: int, kind: str) -> str:
    """The database `wp`: WordPress's schema and POSTS posts per unit (the WordPress
    site), or one table of ROWS rows per unit (synthetic); what it holds, in words."""
    db.sql("CREATE DATABASE wp CHARACTER SET utf8mb4")
    if kind == "wordpress":
        db.load("wp", wordpress_sql(scale).read_bytes())
        return f"WordPress's tables with {POSTS * scale} posts"
    db.sql(f"""
        USE wp;
        CREATE TABLE wp_posts (ID BIGINT PRIMARY KEY AUTO_INCREMENT, post_content LONGTEXT,
                               post_title TEXT, guid VARCHAR(255));
        INSERT INTO wp_posts (post_content, post_title, guid)
        SELECT CONCAT('<p>Lorem ipsum ', seq, ' ', SHA2(seq, 512), ' dolor sit amet</p>'),
               CONCAT('Post ', seq), CONCAT('https://example.org/?p=', seq)
        FROM seq_1_to_{ROWS * scale};
    """)
    return f"{ROWS * scale} rows"


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Figures:
    """What one side of the comparison measured, over all its runs."""

    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    spool: list[int] = field(default_factory=list)

    def add(self, run: tuple[float, int, int]) -> None:
        self.times.append(run[0])
        self.rss.append(run[1])
        self.spool.append(run[2])


@dataclass
class Host:
    """What a bench runs against: its directory, a MariaDB, an FTP server's root and port."""

    base: Path
    db: MariaDB
    ftp_root: Path
    port: int
    server: str  # vsftpd or pyftpdlib


@contextlib.contextmanager
def bench_host(prefix: str, under: str | None = None) -> Iterator[Host]:
    """A temporary directory (below `under`) with a throwaway MariaDB and FTP server,
    all removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
    os.chmod(base, 0o755)
    servers = start_mariadb(base / "db")
    db = next(servers)
    ftp_root = base / "ftp"
    ftp_root.mkdir()
    port = free_port()
    try:
        with ftp_server(ftp_root, port) as server_name:
            yield Host(base, db, ftp_root, port, server_name)
    finally:
        servers.close()
        shutil.rmtree(base, ignore_errors=True)


def compare(scale: int, pairs: int, kind: str = "wordpress") -> tuple[Figures, Figures]:
    with bench_host("ba-compare-") as host:
        return _compare(
            host.base, host.db, host.ftp_root, host.port, host.server, scale, pairs, kind
        )


def _compare(
    base: Path,
    db: MariaDB,
    ftp_root: Path,
    port: int,
    server: str,
    scale: int,
    pairs: int,
    kind: str,
) -> tuple[Figures, Figures]:
    site = base / "site"
    make_site(site, scale, kind)
    held = fill_database(db, scale, kind)
    spool = base / "spool"
    config = write_jobs(base, port, site, keep=1, job=database_key(base, db))
    reference = (
        f"{site_pipeline(site, port)}; "
        f"mariadb-dump --no-defaults --socket={db.socket} --user=root --single-transaction "
        f"--quick --routines --triggers --events --hex-blob wp | zstd -3 -T0 -q | "
        f"curl -sS --ftp-create-dirs -T - {reference_url(port)}/db.sql.zst"
    )
    env = {
        **os.environ,
        "MYSQL_PWD": db.root_password,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    agent = [sys.executable, "-m", "backupagent", "--config", str(config), "run-job", "bench"]
    files = [p for p in site.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(
        f"{kind} site at scale {scale}: {size / 2**20:.0f} MiB in {len(files)} files; "
        f"database: {held}; FTP server {server}; {os.cpu_count()} cores"
    )
    # the site and the database were just written: let writeback finish, and run each
    # side once unmeasured (MariaDB's buffer pool, the page cache, vsftpd's first login)
    subprocess.run(["sync"], check=True)
    timed(agent, env, spool)
    timed(["bash", "-c", reference], env, None)
    ours, theirs = Figures(), Figures()
    for pair in range(1, pairs + 1):
        ours.add(timed(agent, env, spool))
        theirs.add(timed(["bash", "-c", reference], env, None))
        print(
            f"  pair {pair}: agent {ours.times[-1]:6.2f} s  reference {theirs.times[-1]:6.2f} s  "
            f"ratio {ours.times[-1] / theirs.times[-1]:.2f}"
        )
    ratios = [a / r for a, r in zip(ours.times, theirs.times, strict=True)]
    home = ftp_root / "agent"
    agent_size = sum(p.stat().st_size for p in home.iterdir() if ".tar.zst." in p.name)
    ref_size = sum(p.stat().st_size for p in (ftp_root / "ref").iterdir())
    print(
        f"  median: agent {statistics.median(ours.times):.2f} s, "
        f"reference {statistics.median(theirs.times):.2f} s, "
        f"ratio {statistics.median(ratios):.2f} (pairs {min(ratios):.2f} to {max(ratios):.2f})"
    )
    print(
        f"  peak RSS (process tree): agent {max(ours.rss) / 2**20:.0f} MiB, "
        f"reference {max(theirs.rss) / 2**20:.0f} MiB"
    )
    print(
        f"  peak spool disk: agent {max(ours.spool) / 2**20:.0f} MiB "
        "(bound: 2 volumes of 64 MiB + the compressed dumps), reference 0 MiB (it streams)"
    )
    print(f"  compressed: agent {agent_size / 2**20:.1f} MiB, reference {ref_size / 2**20:.1f} MiB")
    return ours, theirs


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
            "import sys, time; started = time.monotonic(); sys.path.insert(0, sys.argv[1])\n"
            "from backupagent.archive import write_archive\n"
            "from backupagent.sources.files import walk\n"
            "import io, pathlib\n"
            "class Null(io.RawIOBase):\n"
            "    def writable(self): return True\n"
            "    def write(self, b): return len(b)\n"
            "ready = time.monotonic()\n"
            "write_archive(walk(pathlib.Path(sys.argv[2]), [], lambda p, r: None), Null())\n"
            "print(time.monotonic() - ready, ready - started)\n"
        )
        repo = str(Path(__file__).resolve().parents[1])
        tar = ["bash", "-c", f"tar -cf - -C {base} tree | zstd -3 -T0 -q > /dev/null"]
        ours, theirs, archiving, imports = [], [], [], []
        for _ in range(5):  # alternating, so both meet the same page cache
            started = time.monotonic()
            subprocess.run(tar, check=True)
            theirs.append(time.monotonic() - started)
            started = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-c", child, repo, str(tree)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            ours.append(time.monotonic() - started)
            archiving.append(float(out[0]))
            imports.append(float(out[1]))
        for label, times in (("GNU tar | zstd", theirs), ("backupagent", ours)):
            t = statistics.median(times)
            print(f"  {label:15} {t:6.2f} s  {count / t:9.0f} files/s (whole process, median of 5)")
        t = statistics.median(archiving)
        print(
            f"  {'':15} {t:6.2f} s  {count / t:9.0f} files/s (archiving only, without Python's "
            f"start and imports: {statistics.median(imports):.2f} s)"
        )
        print(
            f"  ratio of files/s, backupagent / GNU tar: "
            f"{statistics.median(theirs) / statistics.median(ours):.2f} (whole process)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def write_jobs(
    base: Path,
    port: int,
    site: Path,
    keep: int,
    job: str = "",
    user: str = BENCH_USER,
    password: str = BENCH_PASSWORD,
) -> Path:
    """`base/jobs.toml`: one job `bench` backing up `site` to the FTP server on `port`
    (the bench's user unless told; the password in `base/ftp.pass`), `job` added to the
    job's table."""
    (base / "ftp.pass").write_text(password)
    config = base / "jobs.toml"
    config.write_text(f"""
[agent]
state_dir = "{base}/state"
log_dir = "{base}/log"
spool_dir = "{base}/spool"
[destinations.ftp]
type = "ftp"
host = "127.0.0.1"
port = {port}
user = "{user}"
password_file = "{base}/ftp.pass"
directory = "/agent"
keep = {keep}
[jobs.bench]
destination = "ftp"
sources = ["{site}"]
{job}
""")
    return config


def database_key(base: Path, db: MariaDB) -> str:
    """The job's `databases` line for the bench database `wp` (its root password
    written to `base/db.pass`)."""
    (base / "db.pass").write_text(db.root_password)
    return (
        f'databases = [{{ type = "mysql", name = "wp", socket = "{db.socket}", '
        f'user = "root", password_file = "{base}/db.pass" }}]'
    )


def reference_url(port: int) -> str:
    """Where the reference pipeline uploads: `ref/` on the bench FTP server."""
    return f"ftp://{BENCH_USER}:{BENCH_PASSWORD}@127.0.0.1:{port}/ref"


def site_pipeline(site: Path, port: int) -> str:
    """The reference for the files, as a bash command: tar | zstd -3 -T0 | curl."""
    return (
        "set -eo pipefail; "
        f"tar -C {site.parent} -cf - {site.name} | zstd -3 -T0 -q | "
        f"curl -sS --ftp-create-dirs -T - {reference_url(port)}/site.tar.zst"
    )


def compile_agent() -> None:
    """Bytecode for backupagent, as `pip install` writes it: the agent is measured as
    installed, not compiling its own source at every start (PYTHONDONTWRITEBYTECODE)."""
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "backupagent", quiet=1)


def main() -> None:
    compile_agent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up servers and user
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--site", choices=("wordpress", "synthetic"), default="wordpress")
    parser.add_argument("--pairs", type=int, default=7)
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
    ours, _ = compare(args.scale, args.pairs, args.site)
    if args.also_4x:
        bigger, _ = compare(args.scale * 4, args.pairs, args.site)
        print(
            f"peak RSS from {args.scale}x to {args.scale * 4}x: {max(ours.rss) / 2**20:.0f} -> "
            f"{max(bigger.rss) / 2**20:.0f} MiB ({max(bigger.rss) / max(ours.rss) - 1:+.0%}); "
            f"median time {statistics.median(ours.times):.2f} -> "
            f"{statistics.median(bigger.times):.2f} s"
        )


if __name__ == "__main__":
    main()
