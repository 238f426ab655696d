"""Peak memory of archiving a large incompressible file, with and without age encryption.

    python bench/encrypt_memory.py [MEGABYTES]     (default 1100)

Each variant runs in its own child process so its peak RSS (ru_maxrss) is its own.
The spool output goes to a temp dir next to the source file and is removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from backupagent.archive import write_archive
from backupagent.crypto import generate
from backupagent.sources.files import walk
src, out, encrypt = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
recipients = [generate()[1]] if encrypt else None
started = time.monotonic()
with out.open("wb") as handle:
    stats = write_archive(walk(src, [], lambda p, r: None), handle, recipients=recipients)
took = time.monotonic() - started
print(f"{took:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {stats.archive_bytes}")
"""


def main(megabytes: int) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="ba-bench-crypt-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        with (src / "big.bin").open("wb") as handle:
            for _ in range(megabytes):
                handle.write(os.urandom(1 << 20))
        print(f"source: {megabytes} MiB of random bytes; cores: {os.cpu_count()}")
        for label, flag in (("zstd only", "0"), ("zstd + age", "1")):
            out = Path(tmp) / f"out-{flag}"
            result = subprocess.run(
                [sys.executable, "-c", CHILD, repo, str(src), str(out), flag],
                capture_output=True,
                text=True,
                check=True,
            )
            took, rss_kib, size = result.stdout.split()
            rate = megabytes / float(took)
            print(
                f"{label:11} {float(took):6.2f} s  {rate:7.1f} MiB/s  peak RSS "
                f"{int(rss_kib) / 1024:6.1f} MiB  output {int(size) / 2**20:8.1f} MiB"
            )
            out.unlink()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1100)
