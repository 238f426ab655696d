"""Bytes on their way somewhere, counted and hashed as they pass (a leaf module: the
archive and the database dump spool both use it)."""

from __future__ import annotations

import hashlib
from typing import Protocol


class Sink(Protocol):
    """Where archive bytes go: a file, a pipe, or the volume writer."""

    def write(self, data: bytes | memoryview, /) -> int: ...

    def flush(self) -> None: ...


class HashingWriter:
    """A write-only stream that forwards to `out` while counting and (unless told
    not to) hashing."""

    def __init__(self, out: Sink, hashed: bool = True) -> None:
        self.out = out
        self.size = 0
        self.hash = hashlib.sha256()
        self.hashed = hashed

    def write(self, data: bytes | memoryview) -> int:
        if self.hashed:
            self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()
