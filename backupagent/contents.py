"""A backup's content index: every member's name, type, size, mtime and where its
header starts in the tar stream, and the restart points where decompression may begin.

The archive writer (archive.py) ends its zstd frame at a member boundary every
RESTART_EVERY bytes of tar (less for small volumes: `spaced`), and around every member
over BIG, and records each such
point as (tar offset, archive offset): from there, `zstd -d | tar -x` works on its own.
So `files` reads only this index, and `restore --include` downloads only the volumes
that hold the compressed bytes from the restart before a wanted member to the one after
it (`ranges`, `needed`). A volume is also cut early at a restart when the next segment
might not fit in it (`cut_early`), so a small file lies within one volume.

The index is uploaded beside the manifest, which pins its size and SHA-256; it comes
back from a server like everything else, so `decode` checks every field and bound.
It never replaces judging the members: restore still parses and judges what it
extracts, and a name the index promised that the stream does not hold is an error.
An encrypted backup's index holds the listing only (an age stream cannot be entered
in the middle), and is encrypted like the archive.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from backupagent import packed

FORMAT = 1
RESTART_EVERY = 4 << 20  # tar bytes between restarts (zstd level 3's window is 2 MiB)
BIG = 1 << 20  # a member larger than this is a segment of its own
MAX_BYTES = 1 << 30  # decompressed
MAX_UPLOADED = 256 << 20  # as stored: a manifest naming a larger one is not believed
MAX_MEMBERS = 5_000_000  # as unpack.MAX_MEMBERS
MAX_NAME = 4096
TYPES = frozenset("0123456")  # tar's regular, hard link, symlink, char, block, dir, fifo


class BadContents(Exception):
    """An index that cannot be trusted: the backup is read whole instead."""


class Row(NamedTuple):
    """One member as the index lists it (tar's type letter; `link` for links)."""

    name: str
    type: str
    size: int
    mtime: int
    link: str
    offset: int  # of its first header in the tar stream
    end: int  # where the next member's header starts


@dataclass
class Recorder:
    """The index as the archive is written: member by member, restart by restart."""

    restartable: bool  # False for an encrypted archive: the listing only
    every: int = RESTART_EVERY
    big: int = BIG
    names: list[str] = field(default_factory=list)
    types: list[bytes] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    links: dict[int, str] = field(default_factory=dict)
    dirs: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # mode, uid, gid
    restarts: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    end: tuple[int, int] = (0, 0)
    _big: bool = False  # the member before was over BIG

    def due(self, at: int, size: int) -> bool:
        """Whether a member of `size` starting at tar offset `at` begins a segment."""
        big, self._big = self._big, size > self.big
        if not self.restartable or at == self.restarts[-1][0]:
            return False
        return big or size > self.big or at - self.restarts[-1][0] >= self.every

    def directory(self, mode: int, uid: int, gid: int) -> None:
        """The member just added is a directory with these (restore --include makes the
        directories above what it wants from the index, not from the stream)."""
        self.dirs[len(self.names) - 1] = (mode & 0o7777, uid, gid)

    @property
    def bound(self) -> int:
        """The most a segment of small members takes compressed: `every` bytes of them,
        one more up to `big`, and what zstd may add to data it cannot compress."""
        return self.every + self.big + (self.every >> 4)

    def restart(self, at: int, position: int) -> None:
        self.restarts.append((at, position))

    def add(self, name: str, kind: bytes, size: int, mtime: int, link: str, at: int) -> None:
        if link:
            self.links[len(self.names)] = link
        self.names.append(name)
        self.types.append(kind)
        self.sizes.append(size)
        self.mtimes.append(mtime)
        self.offsets.append(at)

    def encode(self, end: tuple[int, int]) -> bytes:
        """The index as zstd-compressed JSON, once the archive ended at `end`."""
        document = {
            "format": FORMAT,
            "names": self.names,
            "types": b"".join(self.types).decode("ascii", "replace"),
            "sizes": self.sizes,
            "mtimes": self.mtimes,
            "offsets": self.offsets,
            "links": {str(i): link for i, link in self.links.items()},
            "dirs": {str(i): list(meta) for i, meta in self.dirs.items()},
            "restarts": self.restarts if self.restartable else [],
            "end": list(end) if self.restartable else [],
        }
        return packed.pack(document)


def spaced(volume_size: int | None) -> Recorder:
    """A recorder whose segments are small beside the volumes (a sixteenth at most)."""
    every = RESTART_EVERY if volume_size is None else min(RESTART_EVERY, volume_size // 16)
    return Recorder(restartable=True, every=every, big=min(BIG, every))


def cut_early(room: int, size: int, bound: int) -> bool:
    """Whether a volume with `room` bytes left (of `size`) is handed over at a restart:
    the next segment of small members (at most `bound`) might not fit, and would then
    need two volumes. Never more than a quarter of a volume is given up."""
    return room < min(bound, size // 4)


@dataclass(frozen=True)
class Contents:
    """An index read back and checked."""

    names: list[str]
    types: str
    sizes: list[int]
    mtimes: list[int]
    offsets: list[int]
    links: dict[int, str]
    dirs: dict[int, tuple[int, int, int]]  # a directory's mode, uid and gid
    restarts: list[tuple[int, int]]  # empty: not restartable (encrypted)
    end: tuple[int, int] | None  # tar bytes and archive bytes in all

    def rows(self) -> Iterator[Row]:
        tar_end = self.end[0] if self.end else -1
        for i, name in enumerate(self.names):
            end = self.offsets[i + 1] if i + 1 < len(self.names) else tar_end
            yield Row(
                name,
                self.types[i],
                self.sizes[i],
                self.mtimes[i],
                self.links.get(i, ""),
                self.offsets[i],
                end,
            )

    @property
    def restartable(self) -> bool:
        return bool(self.restarts)


def _integers(value: object, count: int) -> bool:
    # bool is refused too: its type is not int
    return type(value) is list and len(value) == count and set(map(type, value)) <= {int}


def decode(data: bytes, archive_size: int) -> Contents:
    """An index from the server's bytes (already checked against the manifest's
    SHA-256), every field checked against the others and the archive's size."""
    try:
        document = packed.unpack(data, MAX_BYTES, FORMAT, "a content index")
    except packed.Unpackable as exc:
        raise BadContents(str(exc)) from None
    names, types = document.get("names"), document.get("types")
    if type(names) is not list or len(names) > MAX_MEMBERS:
        raise BadContents(f"no list of at most {MAX_MEMBERS} names")
    count = len(names)
    if not all(type(n) is str and 0 < len(n) <= MAX_NAME and "\0" not in n for n in names):
        raise BadContents(f"a name is not a string of 1 to {MAX_NAME} characters")
    if type(types) is not str or len(types) != count or not set(types) <= TYPES:
        raise BadContents("the types are not one tar type letter per member")
    columns = {key: document.get(key) for key in ("sizes", "mtimes", "offsets")}
    for key, column in columns.items():
        if not _integers(column, count):
            raise BadContents(f"the {key} are not an integer per member")
    sizes, mtimes, offsets = columns["sizes"], columns["mtimes"], columns["offsets"]
    assert isinstance(sizes, list) and isinstance(mtimes, list) and isinstance(offsets, list)
    if count and (min(sizes) < 0 or offsets[0] < 0):
        raise BadContents("a size or an offset is negative")
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        raise BadContents("the offsets do not increase")
    links = _links(document.get("links"), count)
    dirs = _dirs(document.get("dirs"), types)
    restarts, end = _restarts(document.get("restarts"), document.get("end"), archive_size)
    if end is not None and offsets and offsets[-1] >= end[0]:
        raise BadContents("a member starts past the end of the tar stream")
    return Contents(names, types, sizes, mtimes, offsets, links, dirs, restarts, end)


def _links(value: object, count: int) -> dict[int, str]:
    if not isinstance(value, dict):
        raise BadContents("the links are not an object")
    links = {}
    for key, link in value.items():
        if not (key.isdigit() and int(key) < count and type(link) is str):
            raise BadContents("a link is not a member's number and a name")
        if not 0 < len(link) <= MAX_NAME or "\0" in link:
            raise BadContents(f"a link is not a string of 1 to {MAX_NAME} characters")
        links[int(key)] = link
    return links


def _dirs(value: object, types: str) -> dict[int, tuple[int, int, int]]:
    if not isinstance(value, dict):
        raise BadContents("the directories are not an object")
    dirs = {}
    for key, meta in value.items():
        if not (key.isdigit() and int(key) < len(types) and types[int(key)] == "5"):
            raise BadContents("a directory entry is not a directory member's number")
        if not _integers(meta, 3) or min(meta) < 0 or meta[0] > 0o7777:
            raise BadContents("a directory's mode, uid and gid are not three small integers")
        dirs[int(key)] = (meta[0], meta[1], meta[2])
    return dirs


def _restarts(
    value: object, end: object, archive_size: int
) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    if value == [] and end == []:
        return [], None
    if (
        type(value) is not list
        or not value
        or len(value) > MAX_MEMBERS + 1
        or not all(_integers(pair, 2) for pair in value)
        or not _integers(end, 2)
    ):
        raise BadContents("the restarts are not pairs of integers, with the end")
    points = [(int(u), int(c)) for u, c in value]
    assert isinstance(end, list)
    last = (int(end[0]), int(end[1]))
    if points[0] != (0, 0) or last[1] != archive_size:
        raise BadContents("the restarts do not begin at 0 and end at the archive's size")
    marks = [*points, last]
    if any(b[0] <= a[0] or b[1] <= a[1] for a, b in itertools.pairwise(marks)):
        raise BadContents("the restarts do not increase")
    return points, last


def ranges(contents: Contents, wanted: Iterable[int]) -> list[tuple[int, int]]:
    """The archive byte ranges to decompress for the members numbered `wanted`: from
    the restart at or before each one's header to the first at or after its end,
    merged and in order. Each range is whole zstd frames starting at a member header."""
    if contents.end is None:
        raise ValueError("an index without restarts cannot be entered in the middle")
    starts = [u for u, _ in contents.restarts]
    marks = [*contents.restarts, contents.end]
    spans = []
    tar_end = contents.end[0]
    for i in wanted:
        first = bisect.bisect_right(starts, contents.offsets[i]) - 1
        end = contents.offsets[i + 1] if i + 1 < len(contents.offsets) else tar_end
        last = bisect.bisect_left(starts, end)  # marks[last]: the first restart >= end
        spans.append((marks[first][1], marks[min(last, len(marks) - 1)][1]))
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def needed(
    spans: Sequence[tuple[int, int]], sizes: Sequence[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """The volumes (by number, in order) holding `spans` of an archive cut into volumes
    of `sizes`, and the spans as offsets into those volumes' concatenation."""
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    chosen: list[int] = []
    for start, stop in spans:
        first = bisect.bisect_right(starts, start) - 1
        last = bisect.bisect_left(starts, stop) - 1
        chosen.extend(v for v in range(first, last + 1) if not chosen or v > chosen[-1])
    taken = set(chosen)
    skipped_before, skipped = [], 0
    for v, size in enumerate(sizes):
        skipped_before.append(skipped)
        if v not in taken:
            skipped += size
    inner = []
    for start, stop in spans:
        volume = bisect.bisect_right(starts, start) - 1
        inner.append((start - skipped_before[volume], stop - skipped_before[volume]))
    return chosen, inner
