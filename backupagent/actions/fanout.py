"""The same volumes to every destination of a job (`destinations = [...]`).

The archive is written once; each volume is published to each destination in turn
before it leaves the spool, so the two-volume spool bound holds whatever their
number. A destination that fails is rolled back at once: with `require = "all"` its
error stops the run, with `require = "any"` the others go on while one is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from backupagent.destinations.base import Destination, DestinationError


@dataclass
class Member:
    destination: Destination
    error: DestinationError | None = None

    @property
    def name(self) -> str:
        return self.destination.name


class Fanout:
    """A job's destinations, driven as one through a run."""

    def __init__(self, destinations: list[Destination], require: str = "all") -> None:
        self.members = [Member(d) for d in destinations]
        self.require = require
        self.log = structlog.get_logger("backupagent.run")

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if m.error is None]

    @property
    def failed(self) -> list[Member]:
        return [m for m in self.members if m.error is not None]

    def describe(self) -> dict[str, object]:
        if len(self.members) == 1:
            return self.members[0].destination.describe()
        return {"destinations": [m.destination.describe() for m in self.members]}

    def check(self) -> None:
        self._each(lambda d: d.check())

    def publish_file(
        self, path: Path, name: str, sha256: str, progress: Callable[[int], None] | None
    ) -> None:
        # progress is the first destination's: the bar shows the archive once
        first = self.live[0].destination if self.live else None
        self._each(lambda d: d.publish_file(path, name, sha256, progress if d is first else None))

    def publish_bytes(self, data: bytes, name: str) -> None:
        self._each(lambda d: d.publish_bytes(data, name))

    def commit(self) -> None:
        for member in self.live:
            member.destination.commit()

    def rollback(self) -> None:
        for member in self.members:
            member.destination.rollback()

    def close(self) -> None:
        for member in self.members:
            member.destination.close()

    def _each(self, op: Callable[[Destination], None]) -> None:
        """`op` on every live destination. A failure is recorded and rolled back;
        it is raised when the requirement can no longer be met."""
        for member in self.live:
            try:
                op(member.destination)
            except DestinationError as exc:
                member.error = exc
                if self.require == "all" or not self.live:
                    raise
                member.destination.rollback()
                self.log.warning(
                    'a destination failed; the others go on (require = "any")',
                    destination=member.name,
                    error=str(exc),
                )
