"""The archive stream: a valid .tar.zst, hashed on the way out, warnings for bad files."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

from backupagent import archive
from backupagent.archive import byte_sum, fast_header, tar_info, write_archive
from backupagent.sources.files import walk

from .helpers import decompress, python_script, tree, unpack


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
        result = python_script(UNREADABLE_SCRIPT, str(base))
        assert f"WARN {secret}: not readable, skipped: Permission denied" in result.stdout
        assert "FILES 1" in result.stdout
    finally:
        import shutil

        shutil.rmtree(base)


def _pax(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


@pytest.mark.parametrize(
    ("name", "size", "mtime", "mode", "uid", "fast"),
    [
        ("a.php", 0, 1_700_000_000, 0o644, 0, True),
        ("b.php", 1, 1_700_000_000.75, 0o600, 0, True),  # fractional mtime: whole seconds
        ("c.php", 511, 0, 0o4755, 0, True),  # setuid bit kept in the header
        ("d.php", 513, 1_700_000_000, 0o644, 1234, True),  # uid without a passwd entry
        ("e.php", 10, -1, 0o644, 0, False),  # before 1970: PAX
        ("f.php", 10, 1_700_000_000, 0o644, 8**7, False),  # uid too large for ustar: PAX
        ("é.php", 10, 1_700_000_000, 0o644, 0, False),  # not ASCII: PAX path
        ("x" * 90, 10, 1_700_000_000, 0o644, 0, True),  # arcname of exactly 100 bytes
        ("y" * 91, 10, 1_700_000_000, 0o644, 0, False),  # 101 bytes: PAX path
    ],
)
def test_fast_headers_equal_tarfiles(
    tmp_path: Path, name: str, size: int, mtime: float, mode: int, uid: int, fast: bool
) -> None:
    if uid and os.geteuid() != 0:
        pytest.skip("needs root to give a file another owner")
    path = tmp_path / name
    path.write_bytes(b"x" * size)
    os.chmod(path, mode)
    if uid:
        os.chown(path, uid, 0)
    os.utime(path, (mtime, mtime))
    arcname = f"files/srv/{name}"
    st = os.lstat(path)
    header = fast_header(arcname, st)
    assert (header is not None) is fast
    expected = _pax(tar_info(arcname, st))
    if header is not None:
        assert header == expected


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 100, b"\xff" * 256, bytes(range(256))])
def test_byte_sum_is_the_sum_up_to_256_bytes(data: bytes) -> None:
    assert byte_sum(data) == sum(data)


def test_fast_headers_stay_right_when_the_field_cache_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "_OCTAL", {})
    monkeypatch.setattr(archive, "_OCTAL_LIMIT", 3)
    for size in (0, 1, 2, 3, 1, 4, 0, 5):  # the cache fills, empties, fills again
        path = tmp_path / f"f{size}"
        path.write_bytes(b"x" * size)
        os.utime(path, (1_700_000_000 + size, 1_700_000_000 + size))
        st = os.lstat(path)
        assert fast_header("files/f", st) == _pax(tar_info("files/f", st))
    assert len(archive._OCTAL) <= 3


@pytest.mark.parametrize(
    ("kind", "linkname", "fast"),
    [
        (tarfile.DIRTYPE, "", True),  # the name gets its trailing slash
        (tarfile.SYMTYPE, "../target", True),
        (tarfile.LNKTYPE, "files/srv/first", True),
        (tarfile.FIFOTYPE, "", True),
        (tarfile.SYMTYPE, "t" * 101, False),  # target too long for ustar: PAX
        (tarfile.SYMTYPE, "é", False),  # not ASCII: PAX
        (tarfile.CHRTYPE, "", False),  # device numbers: tarfile
    ],
)
def test_fast_headers_of_other_members_equal_tarfiles(
    tmp_path: Path, kind: bytes, linkname: str, fast: bool
) -> None:
    st = os.lstat(tmp_path)
    header = fast_header("files/srv/member", st, kind, linkname)
    assert (header is not None) is fast
    if header is not None:
        assert header == _pax(tar_info("files/srv/member", st, linkname, kind))


def test_links_fifos_and_directories_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a").write_text("hi\n")
    os.link(root / "d" / "a", root / "d" / "b")
    (root / "d" / "c").symlink_to("a")
    (root / "d" / "long").symlink_to("t" * 150)  # target too long for ustar: PAX
    os.mkfifo(root / "d" / "f")
    data, stats = _archive(root)
    with tarfile.open(fileobj=io.BytesIO(decompress(data))) as tar:
        members = {m.name.removeprefix(f"files{root}"): m for m in tar}
        assert members["/d/b"].islnk() and members["/d/b"].linkname == f"files{root}/d/a"
        assert members["/d/c"].issym() and members["/d/c"].linkname == "a"
        assert members["/d/long"].linkname == "t" * 150
        assert members["/d/f"].isfifo() and members["/d"].isdir()
        assert tar.extractfile(members["/d/a"]).read() == b"hi\n"
    assert (stats.files, stats.symlinks, stats.other) == (2, 2, 1)
