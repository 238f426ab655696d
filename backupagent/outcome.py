"""How a run ended and what started it: the words the history, the CLI, the mail and
the metrics share. A leaf module: it imports nothing of the agent at run time."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backupagent.archive import ArchiveStats

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75


class Outcome(StrEnum):
    """A run's result, as the history stores it."""

    RUNNING = "running"  # recorded at the start; never the last word
    SUCCESS = "success"
    WARNING = "warning"  # published, with warnings (exit 0)
    FAILED = "failed"
    ABORTED = "aborted"  # stopped by a signal


OK = frozenset({Outcome.SUCCESS, Outcome.WARNING})  # the backup was published


class Trigger(StrEnum):
    """What started a run."""

    MANUAL = "manual"
    SCHEDULE = "schedule"
    CATCH_UP = "catch-up"
    VERIFY = "verify"
    DRILL = "drill"  # a restore drill: the newest backup loaded into scratch databases


BACKUP_TRIGGERS = (Trigger.MANUAL, Trigger.SCHEDULE, Trigger.CATCH_UP)  # runs that back up


@dataclass
class DestinationResult:
    """How one of the run's destinations fared (a job may have several)."""

    name: str
    outcome: str
    error: str | None = None
    suggestion: str | None = None

    def view(self) -> dict[str, str | None]:
        """As the history, the JSON summary and the ping store it."""
        return {"name": self.name, "result": self.outcome, "error": self.error}


@dataclass
class RunResult:
    """What a run did, for the CLI summary, the notifications and the run history."""

    job: str
    run_id: str
    log_path: Path
    trigger: str = Trigger.MANUAL
    outcome: str = Outcome.FAILED
    backup_id: str | None = None
    archive: str | None = None  # the uploaded archive's name
    stats: ArchiveStats | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    suggestion: str | None = None
    seconds: float = 0.0
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    destinations: list[DestinationResult] = field(default_factory=list)
    manifest_sha256: str | None = None  # of the manifest this run published

    @property
    def ok(self) -> bool:
        return self.outcome in OK

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED
