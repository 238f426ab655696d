"""backupagent restore against the pipeline an expert would use to get a site back.

    python bench/restore.py [--scale 1] [--pairs 5] [--target disk|tmpfs|both|none]

Builds bench/site.py's WordPress tree and its MariaDB database (as bench/compare.py),
starts vsftpd on 127.0.0.1 (pyftpdlib when vsftpd cannot run here), backs the site
up once with `backupagent run-job` (64 MiB volumes, the default) and once with the
reference (`tar | zstd -3 -T0 | curl -T`, and the dump the same way), then alternates

    backupagent restore bench --to TARGET                       with the reference
    curl -s .../site.tar.zst | zstd -d | tar -x -C TARGET; curl -s .../db.sql.zst | zstd -d

into an empty TARGET on disk (below /var/tmp) or on a tmpfs, each run after one
unmeasured run of each side. It prints each pair's wall times and ratio
(agent/reference), their median, the peak RSS of each process tree and the peak size
of the agent's spool (the bound: two volumes).

Then, from the same backup, what the content index buys: `backupagent files bench`
and `backupagent restore bench --include FILE` of one small file in the middle of the
site, each timed (median of --pairs) with the bytes the server sent, counted from
vsftpd's transfer log (not counted under pyftpdlib). `--target none` runs only these.
Figures, not tests: nothing here asserts a target. Needs root (or a user who may run
mariadbd), tar, zstd and curl.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare import (
    Figures,
    bench_host,
    compile_agent,
    database_key,
    fill_database,
    reference_url,
    sent_since,
    site_pipeline,
    timed,
    transfers_log,
    write_jobs,
)
from bench.site import make_site


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def bench(scale: int, pairs: int, places: list[str]) -> None:
    with bench_host("ba-restore-", "/var/tmp") as host:
        base, db, port = host.base, host.db, host.port
        site = base / "site"
        make_site(site, scale, "wordpress")
        fill_database(db, scale, "wordpress")
        config = write_jobs(base, port, site, keep=1, job=database_key(base, db))
        env = {
            **os.environ,
            "MYSQL_PWD": db.root_password,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        agent = [sys.executable, "-m", "backupagent", "--config", str(config)]
        timed([*agent, "run-job", "bench"], env, None)
        dump = (
            f"mariadb-dump --no-defaults --socket={db.socket} --user=root "
            "--single-transaction --quick --routines --triggers --events --hex-blob wp | "
            f"zstd -3 -T0 -q | curl -sS --ftp-create-dirs -T - {reference_url(port)}/db.sql.zst"
        )
        timed(["bash", "-c", f"{site_pipeline(site, port)}; {dump}"], env, None)
        files = [p for p in site.rglob("*") if p.is_file()]
        volumes = sorted((host.ftp_root / "agent").glob("*.tar.zst.*"))
        print(
            f"WordPress site at scale {scale}: "
            f"{sum(p.stat().st_size for p in files) / 2**20:.0f} MiB in {len(files)} files; "
            f"backup: {len(volumes)} volumes, "
            f"{sum(v.stat().st_size for v in volumes) / 2**20:.1f} MiB; FTP server "
            f"{host.server}; {os.cpu_count()} cores"
        )
        for place in places:
            with contextlib.ExitStack() as stack:
                where = base / f"targets-{place}"
                if place == "tmpfs":
                    stack.enter_context(tmpfs(where, f"{4 * scale + 2}G"))
                else:
                    where.mkdir()
                _alternate(agent, env, port, where, base / "spool", pairs, place)
        _partial(agent, env, host.ftp_root, site, base / "partial", pairs, volumes)


def _partial(
    agent: list[str],
    env: dict[str, str],
    ftp_root: Path,
    site: Path,
    target: Path,
    pairs: int,
    volumes: list[Path],
) -> None:
    """`files` and a one-file `restore --include`: time and what the server sent."""
    small = sorted(p for p in site.rglob("*.php") if p.stat().st_size < 32 << 10)
    wanted = small[len(small) // 2]
    log = transfers_log(ftp_root)
    commands = {
        "files": [*agent, "files", "bench"],
        "one file": [*agent, "restore", "bench", "--to", str(target), "--include", str(wanted)],
    }
    print(
        f"  from the index ({len(volumes)} volumes, the largest "
        f"{max(v.stat().st_size for v in volumes)} bytes; one file: {wanted}, "
        f"{wanted.stat().st_size} bytes):"
    )
    for what, argv in commands.items():
        times, sent = [], []
        for _ in range(pairs + 1):  # the first unmeasured
            shutil.rmtree(target, ignore_errors=True)
            mark = log.stat().st_size if log.exists() else 0
            times.append(timed(argv, env, None)[0])
            sent.append(sent_since(ftp_root, mark))
        names = [name for name, _ in sent[-1]]
        print(
            f"    {what}: median {statistics.median(times[1:]):.2f} s "
            f"({min(times[1:]):.2f} to {max(times[1:]):.2f}); the server sent "
            f"{sum(n for _, n in sent[-1])} bytes: {len(names)} files, "
            f"{sum('.tar.zst.' in n for n in names)} of them volumes"
            + ("" if log.exists() else " (not counted: no vsftpd transfer log)")
        )
    shutil.rmtree(target, ignore_errors=True)


def _alternate(
    agent: list[str],
    env: dict[str, str],
    port: int,
    where: Path,
    spool: Path,
    pairs: int,
    place: str,
) -> None:
    target = where / "restored"
    ours_argv = [*agent, "restore", "bench", "--to", str(target)]
    url = reference_url(port)
    theirs_argv = [
        "bash",
        "-c",
        f"set -eo pipefail; mkdir -p {target}; "
        f"curl -sS {url}/site.tar.zst | zstd -d -q | tar -x -C {target}; "
        f"curl -sS {url}/db.sql.zst | zstd -d -q > {target}/db.sql",
    ]

    def run(argv: list[str], sampled: Path | None) -> tuple[float, int, int]:
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        return timed(argv, env, sampled)

    run(ours_argv, spool)  # one unmeasured run of each: page cache, first logins
    run(theirs_argv, None)
    ours, theirs = Figures(), Figures()
    print(f"  target on {place}:")
    for pair in range(1, pairs + 1):
        ours.add(run(ours_argv, spool))
        theirs.add(run(theirs_argv, None))
        print(
            f"    pair {pair}: agent {ours.times[-1]:6.2f} s  reference {theirs.times[-1]:6.2f} s"
            f"  ratio {ours.times[-1] / theirs.times[-1]:.2f}"
        )
    ratios = [a / r for a, r in zip(ours.times, theirs.times, strict=True)]
    print(
        f"    median: agent {statistics.median(ours.times):.2f} s, reference "
        f"{statistics.median(theirs.times):.2f} s, ratio {statistics.median(ratios):.2f} "
        f"(pairs {min(ratios):.2f} to {max(ratios):.2f})"
    )
    print(
        f"    peak RSS (process tree): agent {max(ours.rss) / 2**20:.0f} MiB, reference "
        f"{max(theirs.rss) / 2**20:.0f} MiB; peak spool: agent {max(ours.spool) / 2**20:.0f} MiB"
    )
    shutil.rmtree(target, ignore_errors=True)


def main() -> None:
    compile_agent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up servers and user
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--target", choices=("disk", "tmpfs", "both", "none"), default="both")
    args = parser.parse_args()
    missing = [t for t in ("tar", "zstd", "curl", "mariadb-dump") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}")
    places = {"both": ["disk", "tmpfs"], "none": []}.get(args.target, [args.target])
    bench(args.scale, args.pairs, places)


if __name__ == "__main__":
    main()
