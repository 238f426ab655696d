"""Incremental backups, the decisions: pure functions over plain data (issue 17).

- the index: every archived path with the stat fields that tell a change (size, mtime
  and ctime in ns, inode, kind), encoded compressed and read back with bounds (it comes
  back from the server like everything else);
- `changes`: what an incremental archives (new or changed paths) and records as
  deleted, against the index of the backup before it;
- `next_kind`: full or incremental, from the chain so far and `full_every`;
- `Newest`: for restoring a point, which backup of its chain supplies each path;
- `keep_chains`: retention that never keeps an incremental without its ancestors.

The run's side is actions/increments.py; restoring a chain is retrieve.extract_chain.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from backupagent import packed

MAX_INDEX_BYTES = 1 << 30  # decompressed: about 10,000,000 paths
MAX_INDEX_ENTRIES = 10_000_000
FORMAT = 2  # 1 was a list of [path, kind, size, mtime, ctime, inode]


class BadIndex(Exception):
    """An index that cannot be trusted: the next run must be a full."""


class Stat(NamedTuple):
    """What tells a path changed: any field differing means archive it again (a tuple:
    tens of thousands are made and compared per run)."""

    kind: str  # "f" file, "d" directory, "l" symlink, "o" other (fifo...)
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


_KINDS = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l"}


def stat_of(st: os.stat_result) -> Stat:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "o")
    return _stat_row((kind, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))


# a Stat from a tuple by tuple.__new__: NamedTuple's own __new__ is a Python call per path
_stat_row = functools.partial(tuple.__new__, Stat)


Index = Mapping[str, Stat]


@dataclass(frozen=True)
class Changes:
    archive: frozenset[str]  # new, changed or retyped paths: archived again
    deleted: tuple[str, ...]  # gone since the previous backup, sorted
    retyped: tuple[str, ...]  # a file became a directory, a link, ...: sorted

    @property
    def empty(self) -> bool:
        return not (self.archive or self.deleted)


def deleted(previous: Index, current: Index) -> list[str]:
    """The paths of `previous` that `current` no longer has, sorted (`changes().deleted`
    without the rest: what a run's manifest records)."""
    return sorted(p for p in previous if p not in current)


def changes(previous: Index, current: Index) -> Changes:
    """What an incremental over `previous` must hold to give `current` back."""
    archive = frozenset(p for p, s in current.items() if previous.get(p) != s)
    gone = tuple(deleted(previous, current))
    retyped = tuple(
        sorted(p for p in archive if p in previous and previous[p].kind != current[p].kind)
    )
    return Changes(archive, gone, retyped)


COLUMNS = ("sizes", "mtimes", "ctimes", "inodes")


def encode(index: Index) -> bytes:
    """The index as zstd-compressed JSON, paths sorted: the same index, the same bytes.

    Column by column (the paths, the kinds as one string, then one list per number),
    so that reading it back is checked by whole lists, not path by path: for a site
    of 13,000 files it is a good part of an incremental night."""
    paths = sorted(index)
    rows = [index[p] for p in paths]
    document: dict[str, object] = {
        "format": FORMAT,
        "paths": paths,
        "kinds": "".join(r[0] for r in rows),
    }
    for number, column in enumerate(COLUMNS, start=1):
        document[column] = [r[number] for r in rows]
    return packed.pack(document)


def decode(data: bytes) -> dict[str, Stat]:
    """An index read back (from the state directory or the server), every field checked;
    BadIndex for anything else."""
    try:
        document = packed.unpack(data, MAX_INDEX_BYTES, FORMAT, "an index")
    except packed.Unpackable as exc:
        raise BadIndex(str(exc)) from None
    paths, kinds = document.get("paths"), document.get("kinds")
    columns = [document.get(c) for c in COLUMNS]
    if type(paths) is not list or len(paths) > MAX_INDEX_ENTRIES:
        raise BadIndex(f"no list of at most {MAX_INDEX_ENTRIES} paths")
    if type(kinds) is not str or len(kinds) != len(paths) or not set(kinds) <= _KIND_LETTERS:
        raise BadIndex("the kinds are not one letter of fdlo per path")
    if not set(map(type, paths)) <= {str}:
        raise BadIndex("a path is not a string")
    for name, column in zip(COLUMNS, columns, strict=True):
        if (  # bool is refused too: its type is not int
            type(column) is not list
            or len(column) != len(paths)
            or not set(map(type, column)) <= {int}
            or (column and min(column) < 0)
        ):
            raise BadIndex(f"the {name} are not a non-negative integer per path")
    index = dict(zip(paths, map(_stat_row, zip(kinds, *columns, strict=True)), strict=True))
    if len(index) != len(paths):
        raise BadIndex("a path appears twice")
    return index


_KIND_LETTERS = frozenset("fdlo")


_EVERY = re.compile(r"^\s*(\d+)\s*([dh])\s*$")


def parse_full_every(value: int | str) -> int | dt.timedelta:
    """`7` (a full every 7th run) or `"7d"` / `"36h"` (when the full is that old)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("must be at least 1 (a full every run)")
        return value
    match = _EVERY.match(str(value))
    if not match or int(match[1]) < 1:
        raise ValueError(f'{value!r} is not a number of runs (7) or an age ("7d", "36h")')
    unit = {"d": "days", "h": "hours"}[match[2]]
    return dt.timedelta(**{unit: int(match[1])})


@dataclass(frozen=True)
class Link:
    """A complete backup of the job as the chain sees it."""

    backup_id: str
    created: dt.datetime
    parent: str | None  # None: a full


Kind = Literal["full", "incremental"]


@dataclass(frozen=True)
class Next:
    kind: Kind
    parent: str | None
    reason: str


def next_kind(
    chain: Sequence[Link], every: int | dt.timedelta, now: dt.datetime, index_matches: bool
) -> Next:
    """Full or incremental. `chain` is the newest backup's chain, full first (empty when
    there is none or it is broken); `index_matches`: the local index is the newest
    backup's (else the state directory is lost or stale: a full, never a wrong
    incremental)."""
    if not chain:
        return Next("full", None, "no complete chain to continue")
    if chain[0].parent is not None:
        return Next("full", None, f"the chain of {chain[-1].backup_id} has no full on the server")
    if not index_matches:
        return Next("full", None, "the local index is not the newest backup's (state_dir lost?)")
    if isinstance(every, int):
        if len(chain) >= every:
            return Next(
                "full", None, f"the chain holds {len(chain)} backups (full_every = {every})"
            )
    elif now - chain[0].created >= every:
        return Next("full", None, f"the full is older than {every} (full_every)")
    return Next("incremental", chain[-1].backup_id, f"continues the chain of {chain[0].backup_id}")


def chain_of(backup_id: str, parents: Mapping[str, str | None]) -> list[str] | None:
    """`backup_id` and its ancestors, full first; None when one is missing or the
    parents loop (a server that lies)."""
    chain = [backup_id]
    while (parent := parents.get(chain[-1])) is not None:
        if parent not in parents or parent in chain:
            return None
        chain.append(parent)
    return list(reversed(chain)) if chain[-1] in parents else None


class TooManyNames(Exception):
    """A chain names more paths than a restore may keep in memory."""


class Newest:
    """Which paths of a chain make its last point, decided as the backups stream in,
    newest first (`wants` for each path of one backup, then `passed` with what that
    backup deleted): a path comes from the newest backup that holds it, unless one
    newer still deleted it. The names it keeps are bounded by `limit` bytes in all (a
    long chain cannot add up what one archive may not hold)."""

    OVERHEAD = 100  # bytes of bookkeeping per name kept, beyond the name

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done: set[str] = set()  # taken from a newer backup
        self.gone: set[str] = set()  # deleted by a newer backup
        self.kept = 0

    def wants(self, path: str) -> bool:
        if path in self.done or path in self.gone:
            return False
        self._keep(path)
        self.done.add(path)
        return True

    def passed(self, deleted: Iterable[str]) -> None:
        """A backup read to its end: what it deleted is gone for the older ones."""
        for path in deleted:
            self._keep(path)
            self.gone.add(path)

    def _keep(self, path: str) -> None:
        self.kept += len(path) + self.OVERHEAD
        if self.kept > self.limit:
            raise TooManyNames(
                f"the chain's archives name more than {self.limit} bytes of members: "
                "refused rather than exhaust memory"
            )


def keep_chains(keep: Iterable[str], parents: Mapping[str, str | None]) -> set[str]:
    """The backups to keep: those retention keeps, and every ancestor of each (an
    incremental is worthless without its full and the increments before it)."""
    kept: set[str] = set()
    for backup_id in keep:
        current: str | None = backup_id
        while current is not None and current not in kept:
            kept.add(current)
            current = parents.get(current)
    return kept
