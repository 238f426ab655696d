"""Walking sources: excludes are gitignore-style, symlinks are never followed."""

from __future__ import annotations

from pathlib import Path

from backupagent.sources.files import identity, walk


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
