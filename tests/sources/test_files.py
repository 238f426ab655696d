"""Walking sources: excludes are gitignore-style, symlinks are never followed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from backupagent.sources.files import Scan, identity, walk


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
    walked = [e for root, ex in roots.items() for e in walk(root, ex, _no_warning)]
    assert [e for e, _ in scanned] == walked
    assert all(st is not None and st.ino == os.lstat(e.path).st_ino for e, st in scanned)
    plain = list(Scan(roots, _no_warning, frozenset(), with_stat=False).start())
    assert [e for e, _ in plain] == walked and all(st is None for _, st in plain)


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
