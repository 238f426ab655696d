"""Writing one `.tar.zst` archive as a byte stream, hashing it on the way out.

`write_archive` pushes bytes into any writable stream (a file, or the volume
writer that hands volumes to the uploader) and returns the archive's size and SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import structlog
import zstandard

from backupagent import crypto
from backupagent.sources.files import Entry

if TYPE_CHECKING:
    from backupagent.sources.databases import Dump


@dataclass
class ArchiveStats:
    """What went into the archive and what came out."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    other: int = 0
    bytes_read: int = 0
    archive_bytes: int = 0
    sha256: str = ""
    warnings: list[str] = field(default_factory=list)


class Sink(Protocol):
    """Where archive bytes go: a file, a pipe, or the volume writer."""

    def write(self, data: bytes | memoryview, /) -> int: ...

    def flush(self) -> None: ...


class HashingWriter:
    """A write-only stream that forwards to `out` while counting and hashing."""

    def __init__(self, out: Sink) -> None:
        self.out = out
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


class _SizedReader:
    """Reads exactly `size` bytes from a file, padding with zeros if it shrank."""

    def __init__(self, handle: BinaryIO, size: int, on_bytes: Callable[[int], None] | None) -> None:
        self.handle = handle
        self.left = size
        self.shrunk_by = 0
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n) if self.shrunk_by == 0 else b""
        if len(data) < n:
            self.shrunk_by += n - len(data)
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        if self.on_bytes:
            self.on_bytes(len(data))
        return data


def write_archive(
    entries: Iterable[Entry | Dump],
    out: Sink,
    *,
    level: int = 3,
    threads: int = 0,
    on_bytes: Callable[[int], None] | None = None,
    recipients: list[str] | None = None,
    on_entry: Callable[[], None] | None = None,
) -> ArchiveStats:
    """Write `entries` as a zstd-compressed PAX tar into `out`; unreadable files become warnings.

    Entries are files and directories to read from disk, or database dumps waiting
    in the spool (decompressed again on their way into the archive).

    `threads = 0` uses one compression thread per core. With `recipients`, the
    compressed stream is encrypted to them (age) before it reaches `out`; the size
    and SHA-256 returned are those of what reaches `out`.
    """
    log = structlog.get_logger("backupagent.archive")
    stats = ArchiveStats()

    def warn(path: str, reason: str) -> None:
        stats.warnings.append(f"{path}: {reason}")
        log.warning("file skipped or stored with a warning", path=path, reason=reason)

    sink: Any = HashingWriter(out)
    compressor = zstandard.ZstdCompressor(level=level, threads=-1 if threads == 0 else threads)
    encrypt = crypto.encrypting(sink, recipients) if recipients else contextlib.nullcontext(sink)
    with (
        encrypt as target,
        compressor.stream_writer(target, closefd=False) as zstream,
        tarfile.open(fileobj=zstream, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in entries:
            if isinstance(entry, Entry):
                _add(tar, entry, stats, warn, on_bytes)
            else:
                _add_dump(tar, entry, on_bytes)
            if on_entry:
                on_entry()
    stats.archive_bytes = sink.size
    stats.sha256 = sink.hash.hexdigest()
    return stats


def _add_dump(tar: tarfile.TarFile, dump: Dump, on_bytes: Callable[[int], None] | None) -> None:
    """A spooled database dump as a regular 0600 file member."""
    info = tarfile.TarInfo(dump.arcname)
    info.size = dump.size
    info.mode = 0o600
    info.mtime = int(dump.spool.stat().st_mtime)
    with dump.spool.open("rb") as raw:
        if dump.compressed:
            with zstandard.ZstdDecompressor().stream_reader(raw) as plain:
                tar.addfile(info, _SizedReader(plain, dump.size, on_bytes))  # type: ignore[arg-type]
        else:
            tar.addfile(info, _SizedReader(raw, dump.size, on_bytes))


def _add(
    tar: tarfile.TarFile,
    entry: Entry,
    stats: ArchiveStats,
    warn: Callable[[str, str], None],
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Add one entry: regular files through an open descriptor, everything else by lstat."""
    try:
        st = os.lstat(entry.path)
    except OSError as exc:
        warn(entry.path, f"vanished before it was read, skipped: {exc.strerror or exc}")
        return
    if not stat.S_ISREG(st.st_mode):
        info = tar.gettarinfo(entry.path, entry.arcname)
        if info is None:  # sockets cannot be archived
            warn(entry.path, "socket, skipped")
            return
        info.mtime = int(info.mtime)
        tar.addfile(info)
        if info.isdir():
            stats.directories += 1
        elif info.issym():
            stats.symlinks += 1
        else:
            stats.other += 1
        return
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        warn(entry.path, f"not readable, skipped: {exc.strerror or exc}")
        return
    with os.fdopen(fd, "rb") as handle:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            warn(entry.path, "changed type while being archived, skipped")
            return
        info = tar.gettarinfo(arcname=entry.arcname, fileobj=handle)
        # whole seconds, as GNU tar keeps them: a float would cost every file an extra
        # PAX header, the largest part of the per-file time
        info.mtime = int(info.mtime)
        reader = _SizedReader(handle, info.size, on_bytes)
        try:
            tar.addfile(info, reader)  # type: ignore[arg-type]
        except OSError as exc:
            # tar stream is now unusable: the member header is out already
            raise OSError(f"reading {entry.path} failed mid-file: {exc}") from exc
        grew = handle.read(1) != b""
        after = os.fstat(fd)
    stats.files += 1
    stats.bytes_read += info.size
    if reader.shrunk_by:
        warn(entry.path, f"shrank by {reader.shrunk_by} bytes while read; stored padded with zeros")
    elif grew or after.st_mtime_ns != before.st_mtime_ns or after.st_size != before.st_size:
        warn(entry.path, "changed while being read; stored as read, may be inconsistent")
