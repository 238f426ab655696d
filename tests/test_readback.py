"""readback: which volumes a sampled verify reads, and the rotation's state (pure)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from backupagent.readback import ReadBack, after, load, pick, save

NOW = dt.datetime(2026, 12, 7, 5, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("count", "percent", "checked", "picked"),
    [
        (10, 10, set(), [0]),
        (10, 25, set(), [0, 1, 2]),  # ceil(2.5)
        (10, 25, {0, 1, 2}, [3, 4, 5]),
        (10, 25, {0, 1, 2, 3, 4, 5, 6, 7, 8}, [9, 0, 1]),  # the rotation starts again
        (10, 100, {3}, [0, 1, 2, 4, 5, 6, 7, 8, 9, 3]),
        (3, 0.1, set(), [0]),  # at least one
        (1, 50, {0}, [0]),
        (0, 50, set(), []),
    ],
)
def test_pick(count: int, percent: float, checked: set[int], picked: list[int]) -> None:
    assert pick(count, percent, checked) == picked


def test_the_rotation_ends_with_the_backup_read_back_in_full() -> None:
    state = ReadBack()
    state = after(state, "b1", 4, [0, 1], NOW)
    assert (state.checked, state.full_at) == ({0, 1}, None)
    state = after(state, "b1", 4, [2, 3], NOW)
    assert (state.checked, state.full_at) == (set(), "2026-12-07T05:30:00+00:00")
    later = NOW + dt.timedelta(days=1)
    state = after(state, "b2", 4, [0, 1], later)  # a newer backup: its own rotation
    assert (state.backup_id, state.checked) == ("b2", {0, 1})
    assert state.full_at == "2026-12-07T05:30:00+00:00"  # the last whole one stays
    state = after(state, "b3", 4, [0, 1], later)  # what b2 had read does not count for b3
    assert state.checked == {0, 1}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "[" * 100_000,
        '{"checked": ["x"]}',
        '{"full_at": "yesterday"}',
        "{" * 5000,
    ],
)
def test_a_state_file_that_cannot_be_read_is_a_fresh_start(tmp_path: Path, text: str) -> None:
    where = tmp_path / "readback"
    where.mkdir()
    (where / "www.json").write_text(text)
    assert load(tmp_path, "www") == ReadBack()


def test_the_state_is_saved_and_loaded(tmp_path: Path) -> None:
    state = ReadBack("www-1", {1, 5}, "2026-12-07T05:30:00+00:00")
    save(tmp_path, "www", state)
    assert load(tmp_path, "www") == state
    assert load(tmp_path, "other") == ReadBack()
    assert state.full_timestamp() == NOW.timestamp()
