"""Extracting an archive that may have been crafted by whoever controls the server.

Every member is judged by `judge` (a pure function, the rules of PEP 706's `data`
filter and stricter) as it streams in (`Admission`, which also bounds what a restore
keeps in memory); the first member that must be refused stops the restore, which then
removes what it wrote (retrieve.py: the target is an empty directory it owns). The
Writer never follows a symbolic link: files are opened with O_EXCL | O_NOFOLLOW under
directories this code created itself, owner, mode and times are set through the open
descriptor, and hard links (only to regular files this restore wrote) and symbolic
links are made last, when nothing more will be written through them. tarfile's own
extraction (and its hard-link fallback, which creates a link and then follows it) is
never used.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

KEEP_MODE = 0o1777  # everything but setuid and setgid
MAX_HEADER = 1 << 20  # a GNU long name or PAX header larger than this is refused
MAX_NAME = 4096  # bytes of a member's name or link target (Linux's PATH_MAX)
MAX_MEMBERS = 5_000_000
# names kept in memory until the end (files for hard links, links and directories made
# last): with the two bounds above, what a restore holds stays bounded too
MAX_KEPT_BYTES = 512 << 20
KEPT_OVERHEAD = 100  # bytes of bookkeeping per kept entry, beyond its names
MAX_SKIPPED_LISTED = 1000  # skipped members listed in the report
CHUNK = 1 << 20


class UnsafeArchive(Exception):
    """The archive holds a member that could write outside the target; nothing is written."""


class Verdict(StrEnum):
    WRITE = "write"
    SKIP = "skip"  # not created, listed in the report (devices, FIFOs, outside links)
    REFUSE = "refuse"  # the whole archive is refused


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""


SPECIAL = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device"}
SPECIAL[tarfile.FIFOTYPE] = "FIFO"


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def leaves(base: str, relative: str) -> bool:
    """`relative`, resolved lexically from the directory `base` inside the target,
    ends outside the target (or is absolute)."""
    if relative.startswith("/"):
        return True
    depth = len(_parts(base))
    for part in _parts(relative):
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


def judge(member: tarfile.TarInfo, files: set[str], outside_links: bool = False) -> Judgement:
    """What to do with one member. `files`: the regular files admitted so far (the
    only things a hard link may point at)."""
    name = member.name
    if not name or "\x00" in name or "\x00" in member.linkname:
        return Judgement(Verdict.REFUSE, "an empty name or a NUL byte in a name")
    if len(name) > MAX_NAME or len(member.linkname) > MAX_NAME:
        return Judgement(Verdict.REFUSE, f"a name or link target over {MAX_NAME} bytes")
    if name.startswith("/"):
        return Judgement(Verdict.REFUSE, "an absolute name")
    if ".." in name.split("/"):
        return Judgement(Verdict.REFUSE, "a name with '..'")
    if not _parts(name):
        return Judgement(Verdict.REFUSE, "a name that is the target itself")
    if member.isreg() or member.isdir():
        return Judgement(Verdict.WRITE)
    if member.islnk():
        target = "/".join(_parts(member.linkname))
        if member.linkname.startswith("/") or ".." in member.linkname.split("/"):
            return Judgement(Verdict.REFUSE, f"a hard link to {member.linkname!r}, outside")
        if target not in files:
            return Judgement(
                Verdict.REFUSE,
                f"a hard link to {member.linkname!r}, which is not a file earlier in the archive",
            )
        return Judgement(Verdict.WRITE)
    if member.issym():
        parent = "/".join(_parts(name)[:-1])
        if leaves(parent, member.linkname) and not outside_links:
            return Judgement(
                Verdict.SKIP,
                f"a symbolic link to {member.linkname!r}, outside the target "
                "(--outside-links creates such links too)",
            )
        return Judgement(Verdict.WRITE)
    kind = SPECIAL.get(member.type, f"member type {member.type!r}")
    return Judgement(Verdict.SKIP, f"a {kind}, not created")


_EXTENDED = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses GNU long names and PAX headers over MAX_HEADER before tarfile reads
    them into memory (a 1 GiB long name would otherwise be one 1 GiB string)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in _EXTENDED and self.size > MAX_HEADER:
            raise tarfile.ReadError(f"a header of {self.size} bytes (the limit is {MAX_HEADER})")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def open_stream(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A forward-only tar reader over `fileobj` with bounded headers."""
    forward: Any = Forward(fileobj)
    return tarfile.open(fileobj=forward, mode="r:", tarinfo=_BoundedTarInfo)  # type: ignore[call-overload]


class Forward:
    """A stream read forward only, with tell() and forward seek(): tarfile's "r:" mode
    reads it without what "r|" costs (its buffer copied whole at every 512-byte
    header read). A seek backwards, which reading in order never needs, is refused."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.buffer = b""
        self.at = 0  # where in `buffer` the next read starts
        self.base = 0  # the stream's offset of buffer[0]

    def tell(self) -> int:
        return self.base + self.at

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            rest = [self.read(CHUNK)]
            while rest[-1]:
                rest.append(self.read(CHUNK))
            return b"".join(rest)
        if len(self.buffer) - self.at >= n:
            self.at += n
            return self.buffer[self.at - n : self.at]
        parts = [self.buffer[self.at :]]
        got = len(parts[0])
        self.base, self.buffer, self.at = self.tell() + got, b"", 0
        while got < n:
            block = self.raw.read(max(CHUNK, n - got))
            if not block:
                break
            if got + len(block) <= n:
                parts.append(block)
                got += len(block)
                self.base += len(block)
            else:
                self.buffer, self.at = block, n - got
                parts.append(block[: self.at])
                got = n
        return b"".join(parts)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else self.tell() + offset
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target < self.tell():
            raise OSError(errno.ESPIPE, "the archive is read forward only")
        while self.tell() < target:
            if not self.read(min(CHUNK, target - self.tell())):
                break
        return self.tell()


class _Data:
    """A member's `size` bytes, read in order straight from the archive's stream."""

    def __init__(self, stream: Forward, size: int) -> None:
        self.stream, self.left = stream, size

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


def data_of(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    """A regular member's data as it streams (open_stream's archives): read straight
    from the forward reader, where tarfile's extractfile adds two buffered layers and
    copies each block twice more; tarfile's own reader for a sparse member or a
    stream not at the member's data."""
    stream = tar.fileobj
    if (
        isinstance(stream, Forward)
        and not member.issparse()
        and stream.tell() == member.offset_data
    ):
        return _Data(stream, member.size)
    return tar.extractfile(member)


def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members one by one, without tarfile keeping every header in memory."""
    for member in tar:
        yield member
        tar.members.clear()  # type: ignore[attr-defined]


@dataclass
class Report:
    """What a restore wrote, and what it left out and why."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """The first pass: every member judged, sizes summed."""

    members: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


class Admission:
    """One archive's members judged in order as they stream (judge, and the bounds on
    what a restore keeps in memory); UnsafeArchive at the first that must be refused."""

    def __init__(self, outside_links: bool = False) -> None:
        self.outside_links = outside_links
        self.result = Plan()
        self.files: set[str] = set()
        self.kept = 0  # what the writing keeps until its end: see MAX_KEPT_BYTES

    def judge(self, member: tarfile.TarInfo) -> Judgement:
        result = self.result
        judgement = judge(member, self.files, self.outside_links)
        if judgement.verdict is Verdict.REFUSE:
            raise UnsafeArchive(f"unsafe member {member.name!r}: {judgement.reason}")
        if judgement.verdict is Verdict.SKIP:
            if len(result.skipped) < MAX_SKIPPED_LISTED:
                result.skipped.append(f"{member.name}: {judgement.reason}")
        else:
            if member.isreg():
                self.files.add("/".join(_parts(member.name)))
                result.bytes += member.size
            self.kept += len(member.name) + len(member.linkname) + KEPT_OVERHEAD
        result.members += 1
        if result.members > MAX_MEMBERS or self.kept > MAX_KEPT_BYTES:
            raise UnsafeArchive(
                f"more than {MAX_MEMBERS} members, or more than {MAX_KEPT_BYTES} bytes of "
                "names to keep: refused rather than exhaust memory"
            )
        return judgement


def plan(items: Iterable[tarfile.TarInfo], outside_links: bool = False) -> Plan:
    """Judge every member; UnsafeArchive at the first one that must be refused."""
    admission = Admission(outside_links)
    for member in items:
        admission.judge(member)
    return admission.result


class Writer:
    """Writes members an Admission let in under `dest` without following links; hard
    links and symbolic links are made at the end (`finish`), when every file is there."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.report = Report()
        self.files: set[str] = set()
        self.hardlinks: list[tuple[str, str]] = []
        self.links: list[_Later] = []
        self.directories: list[_Later] = []
        self.made: set[str] = set()  # directories made (or found) in the target
        self.as_root = os.geteuid() == 0

    def add(self, member: tarfile.TarInfo, judgement: Judgement, data: IO[bytes] | None) -> None:
        """Write `member` (`data`: a regular file's bytes) as `judgement` says."""
        if judgement.verdict is Verdict.REFUSE:  # an Admission raised already
            raise UnsafeArchive(f"unsafe member {member.name!r}: {judgement.reason}")
        if judgement.verdict is Verdict.SKIP:
            if len(self.report.skipped) < MAX_SKIPPED_LISTED:
                self.report.skipped.append(f"{member.name}: {judgement.reason}")
            return
        rel = "/".join(_parts(member.name))
        if member.issym():
            self.links.append(_Later.of(rel, member))
        elif member.isdir():
            self._directory(rel)
            self.directories.append(_Later.of(rel, member))
        elif member.islnk():
            self.hardlinks.append((rel, "/".join(_parts(member.linkname))))
        else:
            assert data is not None
            self._file(rel, member, data)

    def _path(self, rel: str) -> str:
        return os.path.join(self.dest, rel)

    def _directory(self, rel: str) -> bool:
        """Make `rel` and its parents as real directories; False if something else is there."""
        if rel in self.made:
            return True
        current = str(self.dest)
        parts = _parts(rel)
        for n, part in enumerate(parts, 1):
            current = os.path.join(current, part)
            if "/".join(parts[:n]) in self.made:
                continue
            try:
                os.mkdir(current, 0o700)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return False
        self.made.add("/".join(parts))  # within the names the Admission bounds
        return True

    def _parent_ready(self, rel: str) -> bool:
        parent = "/".join(_parts(rel)[:-1])
        if self._directory(parent):
            return True
        self.report.skipped.append(f"{rel}: its directory is not a directory in the target")
        return False

    def _file(self, rel: str, member: tarfile.TarInfo, data: IO[bytes]) -> None:
        if not self._parent_ready(rel):
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self._path(rel), flags, 0o600)
        except FileExistsError:
            self.report.skipped.append(f"{rel}: a second member of this name; the first was kept")
            return
        try:
            _copy(data, fd, member.size)
            if self.as_root:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & KEEP_MODE)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.files.add(rel)
        self.report.files += 1

    def _hardlink(self, rel: str, target: str) -> None:
        if target not in self.files or not self._parent_ready(rel):
            self.report.skipped.append(f"{rel}: a hard link to {target!r}, which was not written")
            return
        try:
            os.link(self._path(target), self._path(rel), follow_symlinks=False)
        except FileExistsError:
            self.report.skipped.append(f"{rel}: something else already has this name")
            return
        self.report.hardlinks += 1

    def finish(self) -> Report:
        """Hard links to the files written, symbolic links, then each directory's
        owner, mode and time, deepest first."""
        for rel, target in self.hardlinks:
            self._hardlink(rel, target)
        for link in self.links:
            self._symlink(link)
        for later in sorted(self.directories, key=lambda d: -d.rel.count("/")):
            try:
                fd = os.open(self._path(later.rel), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                if self.as_root:
                    os.fchown(fd, later.uid, later.gid)
                os.fchmod(fd, later.mode & KEEP_MODE)
                os.utime(fd, (later.mtime, later.mtime))
            finally:
                os.close(fd)
            self.report.directories += 1
        return self.report

    def _symlink(self, member: _Later) -> None:
        rel = member.rel
        if not self._parent_ready(rel):
            return
        path = self._path(rel)
        try:
            os.symlink(member.linkname, path)
        except FileExistsError:
            self.report.skipped.append(f"{rel}: something else already has this name")
            return
        try:
            if self.as_root:
                os.lchown(path, member.uid, member.gid)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise
        self.report.symlinks += 1


@dataclass(frozen=True, slots=True)
class _Later:
    """What the last steps need of a symbolic link or a directory (not the TarInfo)."""

    rel: str
    linkname: str
    uid: int
    gid: int
    mode: int
    mtime: int

    @classmethod
    def of(cls, rel: str, member: tarfile.TarInfo) -> _Later:
        return cls(rel, member.linkname, member.uid, member.gid, member.mode, int(member.mtime))


def _copy(data: IO[bytes], fd: int, size: int) -> None:
    """`size` bytes into `fd`; runs of zeros become holes (sparse files stay sparse)."""
    written, hole = 0, False
    while written < size:
        chunk = data.read(min(CHUNK, size - written))
        if not chunk:
            raise UnsafeArchive("a member ended before its declared size")
        hole = chunk[0] == 0 and chunk[-1] == 0 and chunk.count(0) == len(chunk)
        if hole:
            os.lseek(fd, len(chunk), os.SEEK_CUR)
        else:
            write_all(fd, chunk)
        written += len(chunk)
    if hole:  # a file that ends in a hole gets its size here
        os.ftruncate(fd, size)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` into `fd` (os.write may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
