"""Writing one `.tar.zst` archive as a byte stream, hashing it on the way out.

`write_archive` pushes bytes into any writable stream (a file, or the volume
writer that hands volumes to the uploader) and returns the archive's size and SHA-256.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import os
import pwd
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import structlog
import zstandard

from backupagent import contents, crypto, stored
from backupagent.hashing import HashingWriter, Sink
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
    contents: bytes = b""  # the content index (contents.py), when one was asked for


BLOCK = tarfile.BLOCKSIZE


class Flush:
    """An entry that pushes everything before it out of the compressor."""


FLUSH = Flush()
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


# per (mode, uid, gid): the header's mode/uid/gid fields, what follows the link name
# (magic, user and group names, zeros), and what those and the checksum field (counted
# as spaces) add to the checksum
_OWNERS: dict[tuple[int, int, int], tuple[bytes, bytes, int] | None] = {}
_ID_LIMIT = 8**7  # what 7 octal digits hold; larger values need a PAX record
_SIZE_LIMIT = 8**11
_FAST_TYPES = frozenset(
    (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE)
)


def _owner(mode: int, uid: int, gid: int) -> tuple[bytes, bytes, int] | None:
    key = (mode, uid, gid)
    if key not in _OWNERS:
        _OWNERS[key] = None
        uname, gname = _user(uid).encode(), _group(gid).encode()
        fits = uid < _ID_LIMIT and gid < _ID_LIMIT and len(uname) <= 32 and len(gname) <= 32
        if fits and uname.isascii() and gname.isascii():
            head = b"%07o\0%07o\0%07o\0" % (mode & 0o7777, uid, gid)
            tail = tarfile.POSIX_MAGIC + uname.ljust(32, b"\0") + gname.ljust(32, b"\0")
            tail += bytes(BLOCK - 329)
            _OWNERS[key] = (head, tail, sum(head) + sum(tail) + 8 * ord(" "))
    return _OWNERS[key]


def fast_header(
    arcname: str, st: os.stat_result, kind: bytes = tarfile.REGTYPE, linkname: str = ""
) -> bytes | None:
    """A member's 512-byte header built from its stat, the per-owner parts made once;
    None when it needs PAX records or device numbers (tarfile builds those).

    Equal to `tar_info(arcname, st, linkname, kind).tobuf(PAX_FORMAT)`, which a test
    checks; tarfile spent most of the per-file time making it.
    """
    owner = _OWNERS.get((st.st_mode, st.st_uid, st.st_gid), _UNKNOWN)
    if owner is _UNKNOWN:
        owner = _owner(st.st_mode, st.st_uid, st.st_gid)
    name = arcname.encode("utf-8", "surrogateescape")
    if kind == tarfile.REGTYPE and not linkname:  # most members: spelled out, it is faster
        size, mtime = st.st_size, int(st.st_mtime)
        if (
            owner is None
            or len(name) > 100
            or not name.isascii()
            or not (size < _SIZE_LIMIT and 0 <= mtime < _SIZE_LIMIT)
        ):
            return None
        head, tail, fixed = owner
        size_field, size_sum = _OCTAL.get(size) or _octal(size)
        mtime_field, mtime_sum = _OCTAL.get(mtime) or _octal(mtime)
        checksum = b"%06o\0 " % (fixed + byte_sum(name) + size_sum + mtime_sum + _REG)
        return b"".join(
            (
                name.ljust(100, b"\0"),
                head,
                size_field,
                mtime_field,
                checksum,
                _FILE_AND_NO_LINK,
                tail,
            )
        )
    if kind == tarfile.DIRTYPE and not name.endswith(b"/"):
        name += b"/"
    link = linkname.encode("utf-8", "surrogateescape")
    size = st.st_size if kind == tarfile.REGTYPE else 0
    mtime = int(st.st_mtime)
    if (
        owner is None
        or kind not in _FAST_TYPES
        or len(name) > 100
        or len(link) > 100
        or not (name.isascii() and link.isascii())
        or not (0 <= size < _SIZE_LIMIT and 0 <= mtime < _SIZE_LIMIT)
    ):
        return None
    head, tail, fixed = owner
    size_field, size_sum = _OCTAL.get(size) or _octal(size)
    mtime_field, mtime_sum = _OCTAL.get(mtime) or _octal(mtime)
    sums = fixed + byte_sum(name) + size_sum + mtime_sum + kind[0] + byte_sum(link)
    return b"".join(
        (
            name.ljust(100, b"\0"),
            head,
            size_field,
            mtime_field,
            b"%06o\0 " % sums,
            kind,
            link.ljust(100, b"\0"),
            tail,
        )
    )


# 12-byte size and mtime fields with the sum of their bytes, by value: sizes and
# mtimes repeat (files unpacked together share an mtime), and formatting cost more
_OCTAL: dict[int, tuple[bytes, int]] = {}
_OCTAL_LIMIT = 1 << 16


def _octal(value: int) -> tuple[bytes, int]:
    if len(_OCTAL) >= _OCTAL_LIMIT:
        _OCTAL.clear()
    field = b"%011o\0" % value
    _OCTAL[value] = (field, sum(field))
    return _OCTAL[value]


def byte_sum(data: bytes) -> int:
    """The sum of up to 256 bytes, as `sum(data)` but four times faster on a path:
    Adler-32's low half is 1 + that sum while that stays below 65,521 (255 * 256 does)."""
    return (zlib.adler32(data) & 0xFFFF) - 1


_UNKNOWN = (b"", b"", 0)  # not looked up yet (None: looked up, needs tarfile)
_REG = tarfile.REGTYPE[0]
_FILE_AND_NO_LINK = tarfile.REGTYPE + bytes(100)


_PADDING = [bytes(-n % BLOCK) for n in range(BLOCK)]  # zeros after n bytes of the last block


def tar_info(
    arcname: str, st: os.stat_result, linkname: str = "", kind: bytes | None = None
) -> tarfile.TarInfo:
    """A member header from a stat result, as `tarfile.gettarinfo` makes it, but with
    whole-second mtimes (as GNU tar: a float costs every file a PAX header) and the
    user and group names looked up once per id rather than once per file."""
    info = tarfile.TarInfo(arcname)
    info.type = kind or _TYPES[stat.S_IFMT(st.st_mode)]
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname, info.gname = _user(st.st_uid), _group(st.st_gid)
    info.mtime = int(st.st_mtime)
    info.size = st.st_size if info.type == tarfile.REGTYPE else 0
    info.linkname = linkname
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return info


class Volumes(Protocol):
    """The volume writer as the archive sees it: a volume can be handed over early."""

    size: int

    def room(self) -> int: ...

    def cut(self) -> None: ...


class _TarStream:
    """PAX tar members written straight into the compressor.

    Headers come from `fast_header`, else `tarfile.TarInfo.tobuf`; small members are
    batched into one write, large files go through in 1 MiB pieces. (tarfile's own
    stream mode copies everything through 10 KiB buffers, which made archiving
    CPU-bound.) Files over SMALL in a compressed format are stored, not compressed
    again (stored.py).
    """

    def __init__(
        self,
        out: Any,
        below: Any,
        index: contents.Recorder | None = None,
        position: Callable[[], int] = lambda: 0,
        volumes: Volumes | None = None,
    ) -> None:
        self.out = out  # the compressor
        self.below = below  # what the compressor writes to
        self.buffer = bytearray()
        self.chunk = bytearray(CHUNK)
        self.offset = 0
        self.hard_links: dict[tuple[int, int], str] = {}
        self.index = index
        self.position = position  # archive bytes written so far (after end_frame: exact)
        self.volumes = volumes

    def note(self, name: str, kind: bytes, size: int, mtime: int, link: str = "") -> None:
        """A member about to be written, in the content index; when a segment is due,
        the frame ends before it and the point is recorded (and a nearly full volume
        handed over)."""
        index = self.index
        if index is None:
            return
        at = self.offset + len(self.buffer)
        if index.due(at, size):
            self.end_frame()
            at = self.offset
            index.restart(at, self.position())
            volumes = self.volumes
            if volumes is not None and contents.cut_early(
                volumes.room(), volumes.size, index.bound
            ):
                volumes.cut()
        index.add(name, kind, size, mtime, link, at)

    def header(self, info: tarfile.TarInfo) -> None:
        self._put(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))

    def member(
        self, arcname: str, st: os.stat_result, kind: bytes = tarfile.REGTYPE, linkname: str = ""
    ) -> None:
        """The header of a member on disk."""
        header = fast_header(arcname, st, kind, linkname)
        if header is None:
            self.header(tar_info(arcname, st, linkname, kind))
        else:
            self._put(header)

    def small_file(self, header: bytes, data: bytes, size: int) -> None:
        """A member read whole: `data` cut or zero-padded to `size`, as its header says."""
        buffer = self.buffer
        buffer += header
        if len(data) == size:
            buffer += data
        else:
            buffer += data[:size].ljust(size, b"\0")
        buffer += _PADDING[size % BLOCK]
        if len(buffer) >= FLUSH_AT:
            self._flush()

    def copy(self, fd: int, size: int, on_bytes: Callable[[int], None] | None) -> tuple[int, bool]:
        """`size` bytes of an open file, zero-padded if it shrank; returns (bytes
        missing, whether it had more)."""
        read = functools.partial(os.read, fd)
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
            store: bool | None = None  # decided by the first piece's leading bytes
            while left:
                piece = view[: min(left, CHUNK)]
                n = os.readv(fd, [piece])
                if not n:
                    break
                if store is None:
                    store = stored.compressed_already(piece[:n])
                    if store:  # the compressor's frame ends; raw frames go below it
                        self.end_frame()
                if store:
                    self.below.write(stored.frame(piece[:n]))
                else:
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

    def end_frame(self) -> None:
        """Everything so far out of the compressor, ending its frame."""
        self._flush()
        self.out.flush(zstandard.FLUSH_FRAME)

    def compressed(self, source: BinaryIO, size: int) -> None:
        """A member's `size` bytes of data, given as zstd frames: the frame being
        compressed is ended, and `source` goes below the compressor unchanged."""
        self.end_frame()
        while chunk := source.read(CHUNK):
            self.below.write(chunk)
        self.offset += size
        self._pad(size)

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
    entries: Iterable[Entry | Dump | Flush],
    out: Sink,
    *,
    level: int = 3,
    threads: int = 0,
    on_bytes: Callable[[int], None] | None = None,
    recipients: list[str] | None = None,
    on_entry: Callable[[], None] | None = None,
    hashed: bool = True,
    indexed: bool = False,
    volumes: Volumes | None = None,
) -> ArchiveStats:
    """Write `entries` as a zstd-compressed PAX tar into `out`; unreadable files become warnings.

    Entries are files and directories to read from disk, database dumps waiting in
    the spool, or FLUSH: everything before it reaches `out` before the next entry is
    taken (the zstd frame is ended there).

    `threads = 0` compresses in this thread (the least memory); N > 0 adds N
    compression threads. With `recipients`, the compressed stream is encrypted to
    them (age) before it reaches `out`; the size and SHA-256 returned are those of
    what reaches `out` (no SHA-256 with `hashed=False`: `out` hashes itself).

    `indexed` records the content index (contents.py) in the stats: with restart
    points unless encrypted; `volumes` (the writer `out` is, or feeds) is then cut
    early at a restart where the next segment might not fit.
    """
    log = structlog.get_logger("backupagent.archive")
    stats = ArchiveStats()
    counted = _Batched(on_bytes) if on_bytes else None
    on_bytes = counted.add if counted else None

    def warn(path: str, reason: str) -> None:
        stats.warnings.append(f"{path}: {reason}")
        log.warning("file skipped or stored with a warning", path=path, reason=reason)

    sink: Any = HashingWriter(out, hashed)
    compressor = zstandard.ZstdCompressor(level=level, threads=threads)
    encrypt = crypto.encrypting(sink, recipients) if recipients else contextlib.nullcontext(sink)
    with encrypt as target, compressor.stream_writer(target, closefd=False) as zstream:
        index = None
        if indexed:
            index = (
                contents.Recorder(False)
                if recipients
                else contents.spaced(volumes.size if volumes else None)
            )
        # an encrypted archive's index has no restarts: position and volumes go unused
        tar = _TarStream(zstream, target, index, lambda: sink.size, volumes)
        for entry in entries:
            if isinstance(entry, Entry):
                _add(tar, entry, stats, warn, on_bytes)
            elif isinstance(entry, Flush):
                tar.end_frame()
                continue
            else:
                _add_dump(tar, entry, on_bytes)
            if on_entry:
                on_entry()
        tar.close()
    if counted:
        counted.flush()
    stats.archive_bytes = sink.size
    if index is not None:
        stats.contents = index.encode((tar.offset, sink.size))
    stats.sha256 = sink.hash.hexdigest() if hashed else ""
    return stats


class _Batched:
    """Byte counts passed on once they reach a MiB: a progress callback per small file
    would cost more than the file."""

    def __init__(self, forward: Callable[[int], None]) -> None:
        self.forward = forward
        self.pending = 0

    def add(self, n: int) -> None:
        self.pending += n
        if self.pending >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.forward(self.pending)
            self.pending = 0


def _add_dump(tar: _TarStream, dump: Dump, on_bytes: Callable[[int], None] | None) -> None:
    """A spooled database dump as a regular 0600 file member.

    A dump spooled as zstd is copied in as it is, as frames of its own between the
    archive's frames (the zstd format allows concatenated frames, and every zstd
    reader joins them): it is compressed once, not decompressed and compressed again.
    """
    info = tarfile.TarInfo(dump.arcname)
    info.size = dump.size
    info.mode = 0o600
    info.mtime = int(dump.spool.stat().st_mtime)
    tar.note(dump.arcname, tarfile.REGTYPE, dump.size, info.mtime)
    tar.header(info)
    with dump.spool.open("rb") as raw:
        if dump.compressed:
            tar.compressed(raw, dump.size)
            if on_bytes:
                on_bytes(dump.size)
        else:
            tar.copy(raw.fileno(), dump.size, on_bytes)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _add(
    tar: _TarStream,
    entry: Entry,
    stats: ArchiveStats,
    warn: Callable[[str, str], None],
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Add one entry: regular files through an open descriptor, everything else by
    lstat; both relative to the directory the walk opened."""
    if not entry.is_file:
        try:
            st = entry.lstat()
        except OSError as exc:
            warn(entry.path, f"vanished before it was read, skipped: {exc.strerror or exc}")
            return
        if not stat.S_ISREG(st.st_mode):
            _add_other(tar, entry, st, stats, warn)
            return
    try:
        parent = entry.parent
        if parent is None:
            fd = os.open(entry.path, _OPEN_FLAGS)
        else:
            fd = os.open(entry.name, _OPEN_FLAGS, dir_fd=parent.fd)
    except FileNotFoundError as exc:
        warn(entry.path, f"vanished before it was read, skipped: {exc.strerror or exc}")
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a symbolic link since the walk
            _add(tar, entry._replace(is_file=False), stats, warn, on_bytes)
            return
        warn(entry.path, f"not readable, skipped: {exc.strerror or exc}")
        return
    try:
        before = os.fstat(fd)
        size = before.st_size
        # most files: small, one link, a plain name: read in one call, header made here
        if (
            size <= SMALL
            and before.st_nlink == 1
            and before.st_mode & _S_IFMT == stat.S_IFREG
            and (header := fast_header(entry.arcname, before)) is not None
        ):
            # one read, so a change while it is read shows in its length: a second
            # fstat would cost more than the rest of the file's work
            data = os.read(fd, size + 1)
            tar.note(entry.arcname, tarfile.REGTYPE, size, int(before.st_mtime))
            tar.small_file(header, data, size)
            if on_bytes:
                on_bytes(size)
            missing, grew, after = size - len(data), len(data) > size, None
        else:
            read = _read_member(tar, entry, fd, before, warn, on_bytes)
            if read is None:
                return
            missing, grew, after = read
    finally:
        os.close(fd)
    stats.files += 1
    stats.bytes_read += size
    if missing > 0:
        warn(entry.path, f"shrank by {missing} bytes while read; stored padded with zeros")
    elif grew or (
        after is not None
        and (after.st_mtime_ns != before.st_mtime_ns or after.st_size != before.st_size)
    ):
        warn(entry.path, "changed while being read; stored as read, may be inconsistent")


_S_IFMT = 0o170000  # stat.S_IFMT as a mask: one operation instead of a call per file


def _read_member(
    tar: _TarStream,
    entry: Entry,
    fd: int,
    before: os.stat_result,
    warn: Callable[[str, str], None],
    on_bytes: Callable[[int], None] | None,
) -> tuple[int, bool, os.stat_result] | None:
    """Header and data of an open regular file that is not small and plain (those `_add`
    takes itself): (bytes missing, grew, stat after), or None if it was skipped."""
    size = before.st_size
    if not stat.S_ISREG(before.st_mode):
        warn(entry.path, "changed type while being archived, skipped")
        return None
    key = (before.st_dev, before.st_ino)
    if before.st_nlink > 1 and key in tar.hard_links:
        target = tar.hard_links[key]
        tar.note(entry.arcname, tarfile.LNKTYPE, 0, int(before.st_mtime), target)
        tar.member(entry.arcname, before, tarfile.LNKTYPE, target)
        return 0, False, before
    if before.st_nlink > 1:
        tar.hard_links[key] = entry.arcname
    tar.note(entry.arcname, tarfile.REGTYPE, size, int(before.st_mtime))
    tar.member(entry.arcname, before)
    try:
        missing, grew = tar.copy(fd, size, on_bytes)
    except OSError as exc:
        if getattr(exc, "spool", False):  # the archive's side failed, not the source
            raise
        # tar stream is now unusable: the member header is out already
        raise OSError(f"reading {entry.path} failed mid-file: {exc}") from exc
    return missing, grew, os.fstat(fd)


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
        target = entry.readlink() if kind == stat.S_IFLNK else ""
    except OSError as exc:
        warn(entry.path, f"vanished before it was read, skipped: {exc.strerror or exc}")
        return
    tar.note(entry.arcname, _TYPES[kind], 0, int(st.st_mtime), target)
    if kind == stat.S_IFDIR and tar.index is not None:
        tar.index.directory(st.st_mode, st.st_uid, st.st_gid)
    tar.member(entry.arcname, st, _TYPES[kind], target)
    if kind == stat.S_IFDIR:
        stats.directories += 1
    elif kind == stat.S_IFLNK:
        stats.symlinks += 1
    else:
        stats.other += 1
