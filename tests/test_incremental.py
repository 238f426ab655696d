"""incremental.py: the decisions behind incremental backups, table-driven (pure)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import zstandard

from backupagent.incremental import (
    BadIndex,
    Link,
    Newest,
    Stat,
    TooManyNames,
    chain_of,
    changes,
    decode,
    encode,
    keep_chains,
    next_kind,
    parse_full_every,
)

F = Stat("f", 10, 1, 1, 100)
D = Stat("d", 0, 1, 1, 200)
L = Stat("l", 5, 1, 1, 300)
NOW = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("previous", "current", "archive", "deleted", "retyped"),
    [
        ({"a": F}, {"a": F}, set(), (), ()),  # nothing changed
        ({}, {"a": F}, {"a"}, (), ()),  # added
        ({"a": F}, {}, set(), ("a",), ()),  # deleted
        ({"a": F}, {"a": Stat("f", 11, 1, 1, 100)}, {"a"}, (), ()),  # size
        ({"a": F}, {"a": Stat("f", 10, 2, 1, 100)}, {"a"}, (), ()),  # mtime only
        ({"a": F}, {"a": Stat("f", 10, 1, 2, 100)}, {"a"}, (), ()),  # ctime only (chmod)
        ({"a": F}, {"a": Stat("f", 10, 1, 1, 101)}, {"a"}, (), ()),  # replaced: new inode
        ({"a": F}, {"a": D, "a/b": F}, {"a", "a/b"}, (), ("a",)),  # file -> directory
        ({"a": D, "a/b": F}, {"a": L}, {"a"}, ("a/b",), ("a",)),  # directory -> symlink
        ({"a": F}, {"b": F}, {"b"}, ("a",), ()),  # a rename: delete + add
    ],
)
def test_changes(previous, current, archive, deleted, retyped) -> None:
    found = changes(previous, current)
    assert found.archive == archive
    assert found.deleted == deleted
    assert found.retyped == retyped


def test_the_index_round_trips_and_is_deterministic() -> None:
    index = {"files/srv/é x": F, "files/srv": D, "files/srv/l": L, "files/srv/\udcff": F}
    assert decode(encode(index)) == index
    assert encode(index) == encode(dict(reversed(list(index.items()))))


def _z(text: str) -> bytes:
    return zstandard.ZstdCompressor().compress(text.encode())


def _doc(**columns: object) -> str:
    """A one-path index of format 2 with `columns` replaced."""
    document = {"format": 2, "paths": ["a"], "kinds": "f", "sizes": [1], "mtimes": [2]}
    return json.dumps({**document, "ctimes": [3], "inodes": [4], **columns})


@pytest.mark.parametrize(
    "data",
    [
        b"not zstd",
        _z('{"format": 1, "entries": []}'),  # the old layout
        _z('{"format": 2}'),
        _z(
            '{"format": 2, "paths": ["a"], "kinds": "f", "sizes": [1], "mtimes": [2], '
            '"ctimes": [3]}'
        ),  # a column missing
        _z(_doc(paths=["a"], kinds="x")),  # no such kind
        _z(_doc(paths=["a"], kinds="ff")),  # more kinds than paths
        _z(_doc(paths=[7])),  # a path not a string
        _z(_doc(sizes=[-1])),
        _z(_doc(sizes=[True])),
        _z(_doc(sizes=[1.5])),
        _z(_doc(sizes=[1, 2])),  # more sizes than paths
        _z(_doc(inodes={"a": 1})),
        _z(
            _doc(
                paths=["a", "a"],
                kinds="ff",
                sizes=[1, 1],
                mtimes=[2, 2],
                ctimes=[3, 3],
                inodes=[4, 4],
            )
        ),  # a path twice
        _z(_doc(paths={"a": 1})),
        _z("[1]"),
        _z("[" * 100_000),
    ],
)
def test_an_index_from_a_hostile_server_is_refused(data: bytes) -> None:
    with pytest.raises(BadIndex):
        decode(data)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), (1, 1), ("7d", dt.timedelta(days=7)), ("36h", dt.timedelta(hours=36))],
)
def test_full_every(value, expected) -> None:
    assert parse_full_every(value) == expected


@pytest.mark.parametrize("value", [0, "0d", "7 weeks", "d", True, -1])
def test_full_every_refuses(value) -> None:
    with pytest.raises(ValueError):
        parse_full_every(value)


def link(n: int, parent: int | None, days_ago: float) -> Link:
    return Link(
        f"b{n}", NOW - dt.timedelta(days=days_ago), None if parent is None else f"b{parent}"
    )


@pytest.mark.parametrize(
    ("chain", "every", "matches", "kind", "parent"),
    [
        ([], 7, True, "full", None),  # nothing to continue
        ([link(1, None, 1)], 7, True, "incremental", "b1"),
        ([link(1, None, 1)], 7, False, "full", None),  # state_dir lost or stale
        ([link(1, None, 3), link(2, 1, 2), link(3, 2, 1)], 3, True, "full", None),  # 3 runs
        ([link(1, None, 3), link(2, 1, 2)], 3, True, "incremental", "b2"),
        ([link(1, None, 8), link(2, 1, 1)], dt.timedelta(days=7), True, "full", None),
        ([link(1, None, 6), link(2, 1, 1)], dt.timedelta(days=7), True, "incremental", "b2"),
        ([link(2, 1, 1)], 7, True, "full", None),  # the full is gone: the chain is broken
    ],
)
def test_next_kind(chain, every, matches, kind, parent) -> None:
    decided = next_kind(chain, every, NOW, matches)
    assert (decided.kind, decided.parent) == (kind, parent)
    assert decided.reason


@pytest.mark.parametrize(
    ("parents", "wanted", "chain"),
    [
        ({"f": None, "i1": "f", "i2": "i1"}, "i2", ["f", "i1", "i2"]),
        ({"f": None}, "f", ["f"]),
        ({"i1": "f", "i2": "i1"}, "i2", None),  # the full is missing
        ({"a": "b", "b": "a"}, "a", None),  # a loop (a lying server)
    ],
)
def test_chain_of(parents, wanted, chain) -> None:
    assert chain_of(wanted, parents) == chain


Layer = tuple[str, frozenset[str], frozenset[str]]  # a backup: its id, paths, deletions


def layers(chain: list[Layer]) -> dict[str, str]:
    """For each path of the point, the backup Newest takes it from: the chain fed
    newest first, as a restore streams it."""
    newest, source = Newest(1 << 20), {}
    for backup_id, members, deleted in reversed(chain):
        for path in sorted(members):
            if newest.wants(path):
                source[path] = backup_id
        newest.passed(deleted)
    return source


def test_layers_give_each_path_its_latest_source_and_drop_deletions() -> None:
    full: Layer = ("f", frozenset({"d", "d/a", "d/b", "x"}), frozenset())
    one: Layer = ("i1", frozenset({"d/a", "y"}), frozenset({"x"}))
    two: Layer = ("i2", frozenset({"x", "d"}), frozenset({"d/b"}))  # x comes back
    assert layers([full]) == {"d": "f", "d/a": "f", "d/b": "f", "x": "f"}
    assert layers([full, one]) == {"d": "f", "d/a": "i1", "d/b": "f", "y": "i1"}
    assert layers([full, one, two]) == {"d": "i2", "d/a": "i1", "x": "i2", "y": "i1"}


def test_a_chain_naming_more_than_the_limit_is_refused() -> None:
    newest = Newest(250)
    assert newest.wants("a")
    assert not newest.wants("a")  # taken already: nothing more kept
    with pytest.raises(TooManyNames, match="more than 250 bytes"):
        newest.passed(["b", "c"])


@pytest.mark.parametrize(
    ("keep", "parents", "kept"),
    [
        ({"i2"}, {"f": None, "i1": "f", "i2": "i1"}, {"f", "i1", "i2"}),  # whole chain
        ({"f2"}, {"f": None, "i1": "f", "f2": None}, {"f2"}),  # an old chain may go
        ({"i1", "g1"}, {"f": None, "i1": "f", "g": None, "g1": "g"}, {"f", "i1", "g", "g1"}),
        (set(), {"f": None}, set()),
    ],
)
def test_keep_chains(keep, parents, kept) -> None:
    assert keep_chains(keep, parents) == kept
