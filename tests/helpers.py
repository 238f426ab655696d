"""Test helpers: describe a tree, unpack an archive."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import zstandard


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every path below root: ('file', sha256) | ('link', target) | ('dir', '')."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def unpack(archive: bytes, dest: Path) -> list[str]:
    """Extract a .tar.zst held in memory; returns the member names in order."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(archive)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = tar.getnames()
        tar.extractall(dest, filter="tar")
    return members
