"""`[discover] wordpress`: a job for each WordPress site found by glob patterns.

A site is a directory the pattern matches that holds `wp-config.php`. Its job is
named after what the pattern's wildcards matched (`/var/www/*/htdocs/` names
`/var/www/shop.example/htdocs` "shop.example"), cut to the characters a job name
may hold. Reading the directory is all this does; the config loader turns each site
into a job with the defaults.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Found:
    """What discovery found: sites by job name, and the sites it skipped with the reason
    (two sites whose names make one job name, a path no job may hold). A site's owner
    picks its directory's name: one bad name skips that site, never the others."""

    sites: dict[str, Path]
    skipped: dict[Path, str]


def wordpress_sites(patterns: list[str], base: Path) -> Found:
    """Every directory matching `patterns` (relative ones to `base`) with a
    wp-config.php in it, in sorted order."""
    by_name: dict[str, list[Path]] = {}
    skipped: dict[Path, str] = {}
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        for match in sorted(glob.glob(full.rstrip("/") or "/")):
            root = Path(match)
            if not (root.is_dir() and (root / "wp-config.php").is_file()):
                continue
            if not str(root).isprintable():
                skipped[root] = "its path holds a control character"
                continue
            found = by_name.setdefault(job_name(full, root), [])
            if root not in found:
                found.append(root)
    for name, roots in by_name.items():
        if len(roots) > 1:
            for root in roots:
                others = ", ".join(str(r) for r in roots if r != root)
                skipped[root] = f"it and {others} would all be job {name!r}"
    return Found({name: roots[0] for name, roots in by_name.items() if len(roots) == 1}, skipped)


def job_name(pattern: str, root: Path) -> str:
    """The parts of `root` that the wildcard parts of `pattern` matched, joined by "-"
    (the last part when the pattern has none), made a valid job name."""
    wanted = [p for p in pattern.rstrip("/").split("/")]
    parts = str(root).rstrip("/").split("/")
    picked = [part for p, part in zip(wanted, parts, strict=False) if WILDCARD.search(p)]
    name = "-".join(picked) or root.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return name if name and name[0].isalnum() else f"site-{name}".rstrip("-")
