"""Writing one `.tar.zst` archive as a byte stream, hashing it on the way out.

`write_archive` pushes bytes into any writable stream (a file, or the volume
writer that hands volumes to the uploader) and returns the archive's size and SHA-256.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import hashlib
import os
import pwd
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


BLOCK = tarfile.BLOCKSIZE
FLUSH_AT = 256 << 10  # small members are batched into writes of this size
CHUNK = 1 << 20  # large files are read and compressed in pieces of this size
SMALL = 64 << 10  # files up to this size are read in one call


@functools.lru_cache(maxsize=256)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.lru_cache(maxsize=256)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


_TYPES = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
}


def tar_info(arcname: str, st: os.stat_result, linkname: str = "") -> tarfile.TarInfo:
    """A member header from a stat result, as `tarfile.gettarinfo` makes it, but with
    whole-second mtimes (as GNU tar: a float costs every file a PAX header) and the
    user and group names looked up once per id rather than once per file."""
    info = tarfile.TarInfo(arcname)
    info.type = _TYPES[stat.S_IFMT(st.st_mode)]
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname, info.gname = _user(st.st_uid), _group(st.st_gid)
    info.mtime = int(st.st_mtime)
    info.size = st.st_size if info.type == tarfile.REGTYPE else 0
    info.linkname = linkname
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return info


class _TarStream:
    """PAX tar members written straight into the compressor.

    Headers are encoded by `tarfile.TarInfo.tobuf`; small members are batched into
    one write, large files go through in 1 MiB pieces. (tarfile's own stream mode
    copies everything through 10 KiB buffers, which made archiving CPU-bound.)
    """

    def __init__(self, out: Any) -> None:
        self.out = out
        self.buffer = bytearray()
        self.chunk = bytearray(CHUNK)
        self.offset = 0
        self.hard_links: dict[tuple[int, int], str] = {}

    def header(self, info: tarfile.TarInfo) -> None:
        self._put(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))

    def copy(
        self, source: int | BinaryIO, size: int, on_bytes: Callable[[int], None] | None
    ) -> tuple[int, bool]:
        """`size` bytes of an open file (descriptor or stream), zero-padded if it
        shrank; returns (bytes missing, whether it had more)."""
        read = (lambda n: os.read(source, n)) if isinstance(source, int) else source.read
        left = size
        if size <= SMALL:
            data = read(size + 1)
            grew = len(data) > size
            self._put(data[:size])
            left -= min(len(data), size)
            while left and (data := read(left)):
                self._put(data)
                left -= len(data)
        else:
            self._flush()
            view = memoryview(self.chunk)
            while left:
                piece = view[: min(left, CHUNK)]
                n = os.readv(source, [piece]) if isinstance(source, int) else source.readinto(piece)  # type: ignore[attr-defined]
                if not n:
                    break
                self.out.write(piece[:n])
                self.offset += n
                left -= n
                if on_bytes:
                    on_bytes(n)
            grew = bool(read(1))
        if left:
            self._put(bytes(left))
        self._pad(size)
        if on_bytes and size <= SMALL:
            on_bytes(size)
        return left, grew

    def close(self) -> None:
        """Two zero blocks, then zeros to a whole 10 KiB record, as tar does."""
        self._put(bytes(2 * BLOCK))
        self._put(bytes(-(self.offset + len(self.buffer)) % tarfile.RECORDSIZE))
        self._flush()

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._put(bytes(BLOCK - size % BLOCK))

    def _put(self, data: bytes | memoryview) -> None:
        self.buffer += data
        if len(self.buffer) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            self.out.write(self.buffer)
            self.offset += len(self.buffer)
            self.buffer = bytearray()


def write_archive(
    entries: Iterable[Entry | Dump],
    out: Sink,
    *,
    level: int = 3,
    threads: int = 0,
    on_bytes: Callable[[int], None] | None = None,
    recipients: list[str] | None = None,
    on_entry: Callable[[], None] | None = None,
    hashed: bool = True,
) -> ArchiveStats:
    """Write `entries` as a zstd-compressed PAX tar into `out`; unreadable files become warnings.

    Entries are files and directories to read from disk, or database dumps waiting
    in the spool (decompressed again on their way into the archive).

    `threads = 0` compresses in this thread (the least memory); N > 0 adds N
    compression threads. With `recipients`, the compressed stream is encrypted to
    them (age) before it reaches `out`; the size and SHA-256 returned are those of
    what reaches `out` (no SHA-256 with `hashed=False`: `out` hashes itself).
    """
    log = structlog.get_logger("backupagent.archive")
    stats = ArchiveStats()

    def warn(path: str, reason: str) -> None:
        stats.warnings.append(f"{path}: {reason}")
        log.warning("file skipped or stored with a warning", path=path, reason=reason)

    sink: Any = HashingWriter(out, hashed)
    compressor = zstandard.ZstdCompressor(level=level, threads=threads)
    encrypt = crypto.encrypting(sink, recipients) if recipients else contextlib.nullcontext(sink)
    with encrypt as target, compressor.stream_writer(target, closefd=False) as zstream:
        tar = _TarStream(zstream)
        for entry in entries:
            if isinstance(entry, Entry):
                _add(tar, entry, stats, warn, on_bytes)
            else:
                _add_dump(tar, entry, on_bytes)
            if on_entry:
                on_entry()
        tar.close()
    stats.archive_bytes = sink.size
    stats.sha256 = sink.hash.hexdigest() if hashed else ""
    return stats


def _add_dump(tar: _TarStream, dump: Dump, on_bytes: Callable[[int], None] | None) -> None:
    """A spooled database dump as a regular 0600 file member."""
    info = tarfile.TarInfo(dump.arcname)
    info.size = dump.size
    info.mode = 0o600
    info.mtime = int(dump.spool.stat().st_mtime)
    tar.header(info)
    with dump.spool.open("rb") as raw:
        if dump.compressed:
            with zstandard.ZstdDecompressor().stream_reader(raw) as plain:
                tar.copy(plain, dump.size, on_bytes)  # type: ignore[arg-type]
        else:
            tar.copy(raw, dump.size, on_bytes)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _add(
    tar: _TarStream,
    entry: Entry,
    stats: ArchiveStats,
    warn: Callable[[str, str], None],
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Add one entry: regular files through an open descriptor, everything else by lstat."""
    if not entry.is_file:
        try:
            st = os.lstat(entry.path)
        except OSError as exc:
            warn(entry.path, f"vanished before it was read, skipped: {exc.strerror or exc}")
            return
        if not stat.S_ISREG(st.st_mode):
            _add_other(tar, entry, st, stats, warn)
            return
    try:
        fd = os.open(entry.path, _OPEN_FLAGS)
    except FileNotFoundError as exc:
        warn(entry.path, f"vanished before it was read, skipped: {exc.strerror or exc}")
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a symbolic link since the walk
            _add(tar, Entry(entry.path, entry.arcname), stats, warn, on_bytes)
            return
        warn(entry.path, f"not readable, skipped: {exc.strerror or exc}")
        return
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            warn(entry.path, "changed type while being archived, skipped")
            return
        key = (before.st_dev, before.st_ino)
        if before.st_nlink > 1 and key in tar.hard_links:
            link = tar_info(entry.arcname, before, linkname=tar.hard_links[key])
            link.type, link.size = tarfile.LNKTYPE, 0
            tar.header(link)
            stats.files += 1
            return
        if before.st_nlink > 1:
            tar.hard_links[key] = entry.arcname
        info = tar_info(entry.arcname, before)
        tar.header(info)
        try:
            missing, grew = tar.copy(fd, info.size, on_bytes)
        except OSError as exc:
            # tar stream is now unusable: the member header is out already
            raise OSError(f"reading {entry.path} failed mid-file: {exc}") from exc
        after = os.fstat(fd)
    finally:
        os.close(fd)
    stats.files += 1
    stats.bytes_read += info.size
    if missing:
        warn(entry.path, f"shrank by {missing} bytes while read; stored padded with zeros")
    elif grew or after.st_mtime_ns != before.st_mtime_ns or after.st_size != before.st_size:
        warn(entry.path, "changed while being read; stored as read, may be inconsistent")


def _add_other(
    tar: _TarStream,
    entry: Entry,
    st: os.stat_result,
    stats: ArchiveStats,
    warn: Callable[[str, str], None],
) -> None:
    """A directory, symbolic link, fifo or device node: a header only."""
    kind = stat.S_IFMT(st.st_mode)
    if kind not in _TYPES:  # sockets cannot be archived
        warn(entry.path, "socket, skipped")
        return
    try:
        target = os.readlink(entry.path) if kind == stat.S_IFLNK else ""
    except OSError as exc:
        warn(entry.path, f"vanished before it was read, skipped: {exc.strerror or exc}")
        return
    tar.header(tar_info(entry.arcname, st, linkname=target))
    if kind == stat.S_IFDIR:
        stats.directories += 1
    elif kind == stat.S_IFLNK:
        stats.symlinks += 1
    else:
        stats.other += 1
