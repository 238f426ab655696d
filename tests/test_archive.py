"""The archive stream: a valid .tar.zst, hashed on the way out, warnings for bad files."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from backupagent.archive import write_archive
from backupagent.sources.files import walk

from .helpers import tree, unpack


def _archive(root: Path, exclude: list[str] | None = None) -> tuple[bytes, object]:
    out = io.BytesIO()
    stats = write_archive(walk(root, exclude or [], lambda p, r: None), out, level=3, threads=2)
    return out.getvalue(), stats


def test_round_trip_preserves_files_and_links(site: Path, tmp_path: Path) -> None:
    data, stats = _archive(site)
    assert stats.sha256 == hashlib.sha256(data).hexdigest()
    assert stats.archive_bytes == len(data)
    unpack(data, tmp_path / "out")
    restored = tmp_path / "out" / "files" / str(site).lstrip("/")
    assert tree(restored) == tree(site)
    assert os.readlink(restored / "dangling") == "/nonexistent/target"
    assert stats.symlinks == 2
    assert stats.warnings == []


def test_file_truncated_after_the_walk_is_stored_as_opened(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    big = root / "growing.txt"
    big.write_bytes(b"a" * 1000)
    entries = list(walk(root, [], lambda p, r: None))
    with open(big, "r+b") as f:
        f.truncate(10)
    # the size comes from fstat of the open file, so the member is consistent
    out = io.BytesIO()
    stats = write_archive(entries, out)
    assert stats.warnings == []
    unpack(out.getvalue(), tmp_path / "out")
    assert (tmp_path / "out" / "files" / str(big).lstrip("/")).read_bytes() == b"a" * 10


def test_file_that_grows_while_read_is_stored_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    fifo_like = root / "status"
    fifo_like.symlink_to("/proc/self/status")  # a link: stored as a link, not read
    proc = Path("/proc/self/status")
    from backupagent.sources.files import Entry

    out = io.BytesIO()
    stats = write_archive([Entry(str(proc), "files/proc/self/status")], out)
    # stat says 0 bytes, reading gives more: stored as read (0 bytes) with a warning
    assert len(stats.warnings) == 1
    assert "changed while being read" in stats.warnings[0]


UNREADABLE_SCRIPT = """
import io, os, sys
from backupagent.archive import write_archive
from backupagent.sources.files import walk
os.setgid(65534); os.setuid(65534)
stats = write_archive(walk(sys.argv[1], [], lambda p, r: print("WALK", p, r)), io.BytesIO())
for w in stats.warnings:
    print("WARN", w)
print("FILES", stats.files)
"""


def test_unreadable_file_is_skipped_with_a_warning() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the archiver as another user")
    base = Path(tempfile.mkdtemp(prefix="ba-unreadable-"))
    try:
        os.chmod(base, 0o755)
        (base / "ok.txt").write_text("fine")
        secret = base / "secret.txt"
        secret.write_text("no")
        os.chmod(secret, 0o000)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        result = subprocess.run(
            [sys.executable, "-c", UNREADABLE_SCRIPT, str(base)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd="/",
        )
        assert f"WARN {secret}: not readable, skipped: Permission denied" in result.stdout
        assert "FILES 1" in result.stdout
    finally:
        import shutil

        shutil.rmtree(base)
