"""Retention, applied: which of a job's backups and leftovers go, and deleting them.

One implementation for the end of every backup run and for `backupagent prune`:
`plan` is pure (names in, decisions out), `apply` deletes what the plan dooms.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from backupagent.config import Config, Retention
from backupagent.destinations import open_destination
from backupagent.destinations.base import Destination
from backupagent.retention import (
    Decision,
    complete_backups,
    decide,
    retention_policy,
    stale_leftovers,
)
from backupagent.state import job_lock


@dataclass(frozen=True)
class Plan:
    """Every complete backup kept or deleted (newest first, with the reasons), and
    the files crashed runs left that are older than the grace period."""

    decisions: list[Decision]
    stale: list[str]
    grace_hours: float

    @property
    def doomed(self) -> list[Decision]:
        """The backups to delete, oldest first."""
        return sorted((d for d in self.decisions if not d.keep), key=lambda d: d.backup)


def plan(job: str, names: list[str], retention: Retention, now: dt.datetime) -> Plan:
    """What retention does to `job`'s files among `names` at `now`."""
    decisions = decide(complete_backups(job, names), retention_policy(retention))
    grace = dt.timedelta(hours=retention.partial_grace_hours)
    stale = stale_leftovers(job, names, now, grace)
    return Plan(decisions, stale, retention.partial_grace_hours)


def apply(destination: Destination, job: str) -> Plan:
    """Plan over the destination's listing, then delete: each backup's manifest
    first, so that from that moment it no longer counts as complete."""
    planned = plan(job, destination.names(), destination.retention, dt.datetime.now(dt.UTC))
    _delete(destination, planned)
    return planned


def _delete(destination: Destination, planned: Plan) -> None:
    log = structlog.get_logger("backupagent.run")
    for decision in planned.doomed:
        destination.delete(decision.backup.names)
        log.info("old backup deleted", backup_id=decision.backup.backup_id)
    kept = sum(d.keep for d in planned.decisions)
    log.info("retention applied", kept=kept, deleted=len(planned.doomed))
    if planned.stale:
        destination.delete(planned.stale)
        log.info("removed uploads left by crashed runs", names=planned.stale)


def prune_job(
    config: Config,
    job: str,
    dry_run: bool = False,
    show: Callable[[Plan], None] = print,
    name: str | None = None,
) -> Plan:
    """`backupagent prune`: with the job's lock held, plan, `show` the plan, and
    delete unless `dry_run`. Raises state.JobLocked, DestinationError."""
    with job_lock(config.agent.state_dir, job):
        destination = open_destination(config, job, name=name)
        try:
            names = destination.names()
            planned = plan(job, names, destination.retention, dt.datetime.now(dt.UTC))
            show(planned)
            if not dry_run:
                _delete(destination, planned)
            return planned
        finally:
            destination.close()
