"""Incremental nights against the full pipeline an expert would use, on loopback.

    python bench/incremental.py [--site wordpress|synthetic] [--scale 1] [--nights 5]
                                [--changed 0.01] [--in-process]

Builds bench/site.py's site (by default the real-looking WordPress tree: Debian's
core and themes, plugins, generated media; about 600 MB in 12,000 files per unit of
--scale), runs one full backup with `incremental = true`, then for each night changes
a fixed share of the files (chosen at random, seeded: text files rewritten as by a
plugin update, media replaced by new bytes of the same size) and alternates
`backupagent run-job` (an incremental) with the reference

    tar -cf - SITE | zstd -3 -T0 | curl -T - ftp://...

It prints each night's wall times and their ratio, what the incremental uploaded
(its volumes and index) against the changed files' bytes compressed with zstd -3,
and the medians. The site only: a job's database dumps stay full every night and add
their own time (compare.py measures them). Figures, not tests: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare import (
    compile_agent,
    free_port,
    ftp_server,
    site_pipeline,
    timed,
    write_jobs,
)
from bench.site import PHP, make_site

TEXT = {".php", ".js", ".css", ".json", ".html", ".txt", ".svg", ".scss"}


def change(files: list[Path], share: float, rng: random.Random) -> int:
    """Change `share` of `files`; the changed bytes, compressed with zstd -3."""
    compressor = zstandard.ZstdCompressor(level=3)
    compressed = 0
    for path in rng.sample(files, max(1, round(len(files) * share))):
        if path.suffix in TEXT:  # a plugin update: new code
            data = (PHP.format(n=rng.randrange(10**9)) * rng.randrange(10, 50)).encode()
        else:
            data = os.urandom(path.stat().st_size)
        path.write_bytes(data)
        compressed += len(compressor.compress(data))
    return compressed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--site", choices=("wordpress", "synthetic"), default="wordpress")
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument("--changed", type=float, default=0.01, help="share of files per night")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the job inside this process, as the daemon does (no interpreter start)",
    )
    args = parser.parse_args()
    compile_agent()
    base = Path(tempfile.mkdtemp(prefix="ba-incremental-"))
    os.chmod(base, 0o755)
    ftp_root = base / "ftp"
    ftp_root.mkdir()
    port = free_port()
    try:
        with ftp_server(ftp_root, port) as server:
            nights(
                base,
                ftp_root,
                port,
                server,
                args.site,
                args.scale,
                args.nights,
                args.changed,
                args.in_process,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def nights(
    base: Path,
    ftp_root: Path,
    port: int,
    server: str,
    kind: str,
    scale: int,
    count: int,
    share: float,
    in_process: bool = False,
) -> None:
    site = base / "site"
    make_site(site, scale, kind)
    config = write_jobs(base, port, site, keep=30, job="incremental = true\nfull_every = 1000")
    reference = site_pipeline(site, port)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    agent = [sys.executable, "-m", "backupagent", "--config", str(config), "run-job", "bench"]
    files = sorted(p for p in site.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(
        f"{kind} site at scale {scale}: {size / 2**20:.0f} MiB in {len(files)} files; "
        f"{share:.0%} changed per night; FTP server {server}; {os.cpu_count()} cores; "
        f"agent {'in this process (as the daemon)' if in_process else 'as backupagent run-job'}"
    )
    if in_process:  # as the daemon runs a job: the interpreter and imports are paid once
        from backupagent.actions.backup import run_job
        from backupagent.config import load_config
        from backupagent.logging import configure

        configure(verbose=False)
        loaded = load_config(config)

        def run_agent() -> float:
            started = time.monotonic()
            result = run_job(loaded, "bench")
            if not result.ok:
                raise SystemExit(f"the run failed: {result.error}")
            return time.monotonic() - started
    else:

        def run_agent() -> float:
            return timed(agent, env, None)[0]

    full = run_agent()
    print(f"  the full: {full:.2f} s")
    rng = random.Random(17)
    ratios, uploads, times, refs = [], [], [], []
    home = ftp_root / "agent"
    for night in range(1, count + 1):
        changed = change(files, share, rng)
        before = {p.name for p in home.iterdir()}
        seconds = run_agent()
        new = [p for p in home.iterdir() if p.name not in before]
        uploaded = sum(p.stat().st_size for p in new if ".manifest." not in p.name)
        reference_seconds, _, _ = timed(["bash", "-c", reference], env, None)
        times.append(seconds)
        refs.append(reference_seconds)
        ratios.append(seconds / reference_seconds)
        uploads.append(uploaded / changed)
        print(
            f"  night {night}: incremental {seconds:6.2f} s  reference {reference_seconds:6.2f} s"
            f"  ratio {ratios[-1]:.3f};  uploaded {uploaded / 2**20:7.2f} MiB for "
            f"{changed / 2**20:7.2f} MiB changed (compressed): {uploads[-1]:.2f}x"
        )
    print(
        f"  median: incremental {statistics.median(times):.2f} s, reference "
        f"{statistics.median(refs):.2f} s, time ratio {statistics.median(ratios):.3f} "
        f"(nights {min(ratios):.3f} to {max(ratios):.3f}); uploaded/changed "
        f"{statistics.median(uploads):.2f}x ({min(uploads):.2f} to {max(uploads):.2f})"
    )


if __name__ == "__main__":
    main()
