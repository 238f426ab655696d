"""The content index: what the archive records, that each span restarts on its own,
which volumes a member needs, and what a hostile index is refused for."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import zstandard

from backupagent import contents
from backupagent.archive import write_archive
from backupagent.contents import BadContents, Contents
from backupagent.sources.files import walk


def _tree(root: Path, seed: int = 1) -> Path:
    """Files from 10 bytes to 2 MB, some incompressible, in a few directories."""
    rnd = random.Random(seed)
    for d in range(8):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(40):
            size = rnd.choice([10, 900, 30_000, 200_000, 2_000_000])
            data = os.urandom(size) if f % 3 else b"text %d " % f * (size // 7 + 1)
            (root / f"d{d}" / f"f{f}").write_bytes(data[:size])
    long = root / ("ü" * 60) / ("a-long-name-" * 12)  # PAX headers: the offset is theirs
    long.parent.mkdir()
    long.write_bytes(b"long\n")
    os.link(long, root / "hard")
    (root / "link").symlink_to("d0/f0")
    return root


def _written(root: Path) -> tuple[bytes, Contents]:
    out = io.BytesIO()
    stats = write_archive(walk(str(root), [], lambda p, r: None), out, indexed=True)
    return out.getvalue(), contents.decode(stats.contents, stats.archive_bytes)


def test_every_member_is_listed_where_tar_finds_it(tmp_path: Path) -> None:
    data, index = _written(_tree(tmp_path / "src"))
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    with tarfile.open(fileobj=plain, mode="r|") as tar:
        found = [(m.name, m.type.decode(), m.size if m.isreg() else 0, m.offset) for m in tar]
    assert found == [(r.name, r.type, r.size, r.offset) for r in index.rows()]
    assert len(index.restarts) > 10 and index.end == (index.end[0], len(data))


def test_each_members_span_decompresses_alone_to_it(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    data, index = _written(root)
    rows = list(index.rows())
    for i in random.Random(2).sample(range(len(rows)), 40):
        ((start, end),) = contents.ranges(index, [i])
        plain = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data[start:end]), read_across_frames=True
        )
        with tarfile.open(fileobj=plain, mode="r|") as tar:
            for member in tar:
                if member.name == rows[i].name:
                    extracted = tar.extractfile(member)
                    if member.isreg():
                        on_disk = root / member.name.removeprefix("files" + str(root)).lstrip("/")
                        assert extracted is not None and extracted.read() == on_disk.read_bytes()
                    break
            else:
                pytest.fail(f"{rows[i].name} not in its span")


def _index(offsets: list[int], restarts: list[tuple[int, int]], end: tuple[int, int]) -> Contents:
    n = len(offsets)
    return Contents(
        [f"m{i}" for i in range(n)], "0" * n, [0] * n, [0] * n, offsets, {}, {}, restarts, end
    )


# members at 0, 100, 200, 300; restarts at tar 0 and 200 (archive 0 and 50); end 400/90
SPANS = [
    ([0], [(0, 50)]),
    ([1], [(0, 50)]),  # ends at 200: the restart there ends its span
    ([2], [(50, 90)]),
    ([3], [(50, 90)]),
    ([0, 3], [(0, 90)]),  # touching spans merge
    ([1, 0], [(0, 50)]),
]


@pytest.mark.parametrize(("wanted", "spans"), SPANS)
def test_spans_run_from_the_restart_before_to_the_one_after(
    wanted: list[int], spans: list[tuple[int, int]]
) -> None:
    index = _index([0, 100, 200, 300], [(0, 0), (200, 50)], (400, 90))
    assert contents.ranges(index, wanted) == spans


NEEDED = [
    # spans, volume sizes -> volumes needed, spans within their concatenation
    ([(0, 10)], [64, 64, 64], [0], [(0, 10)]),
    ([(70, 100)], [64, 64, 64], [1], [(6, 36)]),
    ([(60, 70)], [64, 64, 64], [0, 1], [(60, 70)]),  # across a cut: both
    ([(10, 20), (140, 150)], [64, 64, 64], [0, 2], [(10, 20), (76, 86)]),
    ([(64, 128)], [64, 64, 64], [1], [(0, 64)]),  # exactly one volume
]


@pytest.mark.parametrize(("spans", "sizes", "volumes", "inner"), NEEDED)
def test_only_the_volumes_holding_the_spans_are_needed(
    spans: list[tuple[int, int]], sizes: list[int], volumes: list[int], inner: list
) -> None:
    assert contents.needed(spans, sizes) == (volumes, inner)


CUTS = [
    # room left, volume size, segment bound -> cut now
    (10 << 20, 64 << 20, 5 << 20, False),
    (4 << 20, 64 << 20, 5 << 20, True),
    (20 << 10, 64 << 10, 12 << 10, False),  # a quarter of a small volume is the most given up
    (11 << 10, 64 << 10, 12 << 10, True),
    (15 << 10, 64 << 10, 30 << 10, True),
    (17 << 10, 64 << 10, 30 << 10, False),
]


@pytest.mark.parametrize(("room", "size", "bound", "cut"), CUTS)
def test_a_volume_is_cut_early_only_where_a_segment_might_not_fit(
    room: int, size: int, bound: int, cut: bool
) -> None:
    assert contents.cut_early(room, size, bound) is cut


def _document(**change: object) -> dict[str, object]:
    document: dict[str, object] = {
        "format": 1,
        "names": ["files/a", "files/b"],
        "types": "05",
        "sizes": [3, 0],
        "mtimes": [1, 2],
        "offsets": [0, 1024],
        "links": {},
        "dirs": {"1": [0o755, 0, 0]},
        "restarts": [[0, 0], [1024, 40]],
        "end": [2048, 100],
    }
    document.update(change)
    return document


def _encoded(document: dict[str, object]) -> bytes:
    return zstandard.ZstdCompressor().compress(json.dumps(document).encode())


def test_a_sound_index_is_read() -> None:
    index = contents.decode(_encoded(_document()), 100)
    assert [r.name for r in index.rows()] == ["files/a", "files/b"]
    assert list(index.rows())[1].end == 2048


HOSTILE = [
    ({"format": 2}, "format"),
    ({"names": ["files/a", 3]}, "name"),
    ({"names": ["files/a", "x" * 5000]}, "name"),
    ({"names": ["files/a", "a\0b"]}, "name"),
    ({"types": "0X"}, "types"),
    ({"types": "0"}, "types"),
    ({"sizes": [3, True]}, "sizes"),
    ({"sizes": [-1, 0]}, "negative"),
    ({"offsets": [1024, 0]}, "offsets do not increase"),
    ({"offsets": [0, 4096]}, "past the end"),
    ({"links": {"7": "files/a"}}, "link"),
    ({"links": {"1": ""}}, "link"),
    ({"dirs": {"0": [0o755, 0, 0]}}, "directory member"),
    ({"dirs": {"1": [0o17777, 0, 0]}}, "three small integers"),
    ({"dirs": {"1": [0o755, -1, 0]}}, "three small integers"),
    ({"restarts": [[10, 0]]}, "begin at 0"),
    ({"restarts": [[0, 0], [1024, 200]]}, "increase"),
    ({"restarts": [[0, 0], [512, 40], [256, 60]]}, "increase"),
    ({"end": [2048, 99]}, "archive's size"),
    ({"restarts": "all"}, "pairs"),
]


@pytest.mark.parametrize(("change", "said"), HOSTILE)
def test_an_index_that_does_not_add_up_is_refused(change: dict[str, object], said: str) -> None:
    with pytest.raises(BadContents, match=said):
        contents.decode(_encoded(_document(**change)), 100)


def test_an_index_that_unpacks_past_its_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contents, "MAX_BYTES", 1000)
    with pytest.raises(BadContents, match="over 1000 bytes"):
        contents.decode(zstandard.ZstdCompressor().compress(b" " * 5000), 100)
    with pytest.raises(BadContents, match="not a zstd stream"):
        contents.decode(b"not zstd", 100)
