"""A schedule's times, each a fixed delay later: how `jitter` spreads the starts of many
jobs on the same cron line without making their times unpredictable."""

from __future__ import annotations

import datetime as dt

from apscheduler.triggers.base import BaseTrigger


class Delayed(BaseTrigger):  # type: ignore[misc]
    """`trigger`'s fire times, each `delay` later."""

    def __init__(self, trigger: BaseTrigger, delay: dt.timedelta) -> None:
        self.trigger = trigger
        self.delay = delay

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime | None:
        previous = previous_fire_time - self.delay if previous_fire_time else None
        fire = self.trigger.get_next_fire_time(previous, now - self.delay)
        return fire + self.delay if fire else None

    def __str__(self) -> str:
        return f"{self.trigger} + {self.delay}"
