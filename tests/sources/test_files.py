"""Walking sources: excludes are gitignore-style, symlinks are never followed."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import resource
import tarfile
import time
from pathlib import Path

import pytest

from backupagent.sources.files import Scan, archive_name, identity, walk

from ..helpers import decompress


def _walk(root: Path, exclude: list[str], skip=frozenset()) -> list[str]:
    warnings: list[str] = []
    names = [e.arcname for e in walk(root, exclude, lambda p, r: warnings.append(p), skip)]
    assert not warnings
    prefix = "files/" + str(root).lstrip("/")
    return [n.removeprefix(prefix).lstrip("/") for n in names]


def test_excludes_follow_gitignore_rules(site: Path) -> None:
    names = _walk(site, ["wp-content/cache/", "*.log"])
    assert "wp-content/cache" not in names
    assert "wp-content/cache/page.html" not in names
    assert "logs/error.log" not in names
    assert "keep.log.txt" in names
    assert "logs" in names  # the directory stays, only its .log file goes
    assert "empty" in names


def test_negation_and_anchored_patterns(site: Path) -> None:
    names = _walk(site, ["*.log", "!logs/error.log", "/index.php"])
    assert "logs/error.log" in names
    assert "index.php" not in names


def test_symlinked_directory_is_not_followed(site: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("must not be archived through the link")
    (site / "linkdir").symlink_to(outside)
    names = _walk(site, [])
    assert "linkdir" in names
    assert not any(n.startswith("linkdir/") for n in names)


def test_skip_by_identity(site: Path) -> None:
    spool = site / "spool"
    spool.mkdir()
    (spool / "partial.tar.zst").write_bytes(b"x")
    names = _walk(site, [], frozenset({identity(spool)}))
    assert not any(n.startswith("spool") for n in names)


# --- the walk ahead of the archive ---------------------------------------------------


def _tree(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"d{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}").write_text(str(i))


def test_the_scan_gives_the_walk_in_order_with_each_lstat(tmp_path: Path) -> None:
    _tree(tmp_path / "a", 3000)  # several batches
    _tree(tmp_path / "b", 10)
    roots = {tmp_path / "a": [], tmp_path / "b": ["d1/"]}
    scanned = list(Scan(roots, _no_warning, frozenset(), with_stat=True).start())
    walked = [e[:4] for root, ex in roots.items() for e in walk(root, ex, _no_warning)]
    assert [e[:4] for e, _ in scanned] == walked  # each walk opens its own directories
    assert all(st is not None and st.ino == os.lstat(e.path).st_ino for e, st in scanned)
    plain = list(Scan(roots, _no_warning, frozenset(), with_stat=False).start())
    assert [e[:4] for e, _ in plain] == walked and all(st is None for _, st in plain)


def test_a_file_gone_before_its_lstat_comes_without_one(tmp_path: Path) -> None:
    """The archive reports it; the scan does not fail."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "gone").write_text("x")
    entries = list(walk(tmp_path / "site", [], _no_warning))
    (tmp_path / "site" / "gone").unlink()
    scan = Scan({tmp_path / "site": []}, _no_warning, frozenset(), with_stat=True)
    scan._produce_entries = lambda: iter(entries)  # type: ignore[method-assign]
    assert [st is None for _, st in scan.start()] == [False, True]


def test_a_closed_scan_stops_walking(tmp_path: Path, monkeypatch) -> None:
    """A failed run closes the scan: its thread ends without anyone reading."""
    from backupagent.sources import files

    monkeypatch.setattr(files, "AHEAD", 1)  # a queue of one batch of two entries
    monkeypatch.setattr(files, "BATCH", 2)
    _tree(tmp_path, 20)  # more than the queue holds
    scan = Scan({tmp_path: []}, _no_warning, frozenset(), with_stat=False).start()
    deadline = time.monotonic() + 10
    while not scan._queue.full():  # the walk fills the queue at once
        assert time.monotonic() < deadline
        scan._worker.check()
    scan.close()
    scan._worker.wait()  # ends: returns instead of waiting on the full queue for ever
    assert not scan._worker.running
    assert len(scan._queue.get_nowait() or []) == 2 and scan._queue.empty()  # no further


def _no_warning(path: str, reason: str) -> None:
    raise AssertionError(f"{path}: {reason}")


def _secret_beside(tmp_path: Path) -> tuple[Path, Path]:
    """A site with uploads/photo.jpg, and a directory outside it holding root's secret."""
    site, secret = tmp_path / "site", tmp_path / "root-only"
    (site / "uploads").mkdir(parents=True)
    (site / "uploads" / "photo.jpg").write_bytes(b"the site's photo")
    secret.mkdir()
    (secret / "photo.jpg").write_bytes(b"ROOT SECRET")
    (secret / "id_rsa").write_bytes(b"ROOT SECRET")
    return site, secret


def test_a_directory_swapped_for_a_link_after_listing_is_not_walked(tmp_path: Path) -> None:
    """The site's user replaces uploads/ with a link to a root-only directory between
    the listing of site/ and the walk into uploads/: the walk does not follow it."""
    site, secret = _secret_beside(tmp_path)
    warnings: list[tuple[str, str]] = []
    seen = []
    for entry in walk(site, [], lambda p, r: warnings.append((p, r))):
        seen.append(entry.path)
        if entry.path == str(site / "uploads"):  # listed; not yet walked into
            (site / "uploads").rename(site / "uploads.old")
            (site / "uploads").symlink_to(secret)
    assert seen == [str(site), str(site / "uploads")]
    assert warnings == [
        (str(site / "uploads"), "no longer a directory (a link or a file now), skipped")
    ]


def test_a_parent_swapped_for_a_link_after_the_walk_is_not_read_through(tmp_path: Path) -> None:
    """The walk has listed uploads/photo.jpg; the user then moves uploads/ away and puts
    a link to a root-only directory in its place. The file read is the site's."""
    from backupagent.archive import write_archive

    site, secret = _secret_beside(tmp_path)
    entries = list(walk(site, [], _no_warning))
    (site / "uploads").rename(site / "uploads.old")
    (site / "uploads").symlink_to(secret)
    out = io.BytesIO()
    stats = write_archive(entries, out)
    with tarfile.open(fileobj=io.BytesIO(decompress(out.getvalue()))) as tar:
        photo = tar.extractfile(archive_name(site / "uploads" / "photo.jpg"))
        assert photo is not None and photo.read() == b"the site's photo"
    assert b"ROOT SECRET" not in decompress(out.getvalue()) and stats.warnings == []


def test_a_walk_out_of_descriptors_fails_instead_of_skipping(tmp_path: Path) -> None:
    """Directories that cannot be opened for want of descriptors are not 'unreadable':
    a backup that silently left them out would look complete."""
    for i in range(40):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "index.php").write_text("<?php")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 20, hard))
    try:
        with pytest.raises(OSError) as raised:
            list(walk(tmp_path, [], _no_warning))  # keeps every entry, so every directory
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised.value.errno == errno.EMFILE


def test_the_scan_holds_few_directories_open(tmp_path: Path) -> None:
    """A tree of tiny directories: the scan, its queue full, holds at most about
    (AHEAD + 1) * OPEN_PER_BATCH of them open, not one per queued entry."""
    from backupagent.sources import files

    for i in range(2000):
        (tmp_path / f"d{i:04}").mkdir()
        (tmp_path / f"d{i:04}" / "index.php").write_text("<?php")
    scan = Scan({tmp_path: []}, _no_warning, frozenset(), with_stat=False).start()
    deadline = time.monotonic() + 10
    while not scan._queue.full():
        assert time.monotonic() < deadline
        scan._worker.check()
    assert 0 < _open_below(tmp_path) <= (files.AHEAD + 2) * files.OPEN_PER_BATCH + 2
    assert sum(1 for _ in scan) == 1 + 2 * 2000  # the rest read and dropped as it comes
    assert _open_below(tmp_path) == 0


def _open_below(path: Path) -> int:
    """Descriptors of this process open on `path` or below it."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sum(link == str(path) or link.startswith(f"{path}/") for link in links)
