"""jitter: a fixed delay per job after each scheduled time."""

from __future__ import annotations

import datetime as dt

import pytest

from backupagent.config import cron_trigger, job_trigger, parse_duration, start_delay
from backupagent.scheduler import missed_run
from backupagent.triggers import Delayed

UTC = dt.UTC


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0), (90, 90), ("90s", 90), ("30m", 1800), (" 2h ", 7200), ("1d", 86400), ("45", 45)],
)
def test_durations(value: int | str, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["30 minutes", "-5", "2w", "", "25h", 86401, True])
def test_not_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


def test_forty_sites_spread_over_the_jitter_the_same_way_every_time() -> None:
    names = [f"site{i:02}" for i in range(40)]
    delays = [start_delay(name, "30m") for name in names]
    assert delays == [start_delay(name, "30m") for name in names]  # stable
    assert all(dt.timedelta(0) <= d <= dt.timedelta(minutes=30) for d in delays)
    assert len({d.seconds // 60 for d in delays}) >= 20  # spread, not bunched
    assert start_delay("site00", 0) == dt.timedelta(0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (dt.datetime(2026, 12, 6, 2, 0, tzinfo=UTC), dt.datetime(2026, 12, 6, 3, 17, tzinfo=UTC)),
        (dt.datetime(2026, 12, 6, 3, 10, tzinfo=UTC), dt.datetime(2026, 12, 6, 3, 17, tzinfo=UTC)),
        (dt.datetime(2026, 12, 6, 3, 20, tzinfo=UTC), dt.datetime(2026, 12, 7, 3, 17, tzinfo=UTC)),
    ],
)
def test_delayed_fire_times(now: dt.datetime, expected: dt.datetime) -> None:
    trigger = Delayed(cron_trigger("0 3 * * *", "UTC"), dt.timedelta(minutes=17))
    assert trigger.get_next_fire_time(None, now) == expected
    after = trigger.get_next_fire_time(expected, expected + dt.timedelta(seconds=1))
    assert after == expected + dt.timedelta(days=1)


def test_catch_up_counts_the_delayed_time() -> None:
    trigger = Delayed(cron_trigger("0 3 * * *", "UTC"), dt.timedelta(minutes=17))
    last = dt.datetime(2026, 12, 5, 3, 17, tzinfo=UTC)
    assert missed_run(trigger, last, dt.datetime(2026, 12, 6, 3, 10, tzinfo=UTC)) is None
    missed = missed_run(trigger, last, dt.datetime(2026, 12, 6, 3, 20, tzinfo=UTC))
    assert missed == dt.datetime(2026, 12, 6, 3, 17, tzinfo=UTC)


def test_no_jitter_is_the_plain_cron_trigger() -> None:
    assert not isinstance(job_trigger("www", "0 3 * * *", 0, None), Delayed)
