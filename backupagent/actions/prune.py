"""Retention, applied: which of a job's backups and leftovers go, and deleting them.

One implementation for the end of every backup run and for `backupagent prune`:
`plan` is pure (names in, decisions out), `apply` deletes what the plan dooms.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from backupagent import incremental
from backupagent.actions import increments
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
    chains: bool = False  # an incremental job's plan

    @property
    def doomed(self) -> list[Decision]:
        """The backups to delete: oldest first; in chains newest first, so that an
        interrupted prune leaves shorter chains, never an incremental without its full."""
        doomed = sorted((d for d in self.decisions if not d.keep), key=lambda d: d.backup)
        return doomed[::-1] if self.chains else doomed


def plan(
    job: str,
    names: list[str],
    retention: Retention,
    now: dt.datetime,
    parents: Mapping[str, str | None] | None = None,
) -> Plan:
    """What retention does to `job`'s files among `names` at `now`. With `parents`
    (an incremental job: each backup's parent, None for a full), the policy counts
    restorable points, and a kept point keeps every backup it builds on."""
    decisions = decide(complete_backups(job, names), retention_policy(retention), now)
    if parents is not None:
        needed = incremental.keep_chains((d.backup.backup_id for d in decisions if d.keep), parents)
        children = {parent: child for child, parent in parents.items() if parent}
        decisions = [
            d
            if d.keep or d.backup.backup_id not in needed
            else Decision(
                d.backup,
                True,
                (f"needed to restore {_kept_child(d.backup.backup_id, children, decisions)}",),
            )
            for d in decisions
        ]
    grace = dt.timedelta(hours=retention.partial_grace_hours)
    stale = stale_leftovers(job, names, now, grace)
    return Plan(decisions, stale, retention.partial_grace_hours, parents is not None)


def _kept_child(backup_id: str, children: Mapping[str, str], decisions: list[Decision]) -> str:
    """The nearest kept backup built on `backup_id` (for the reason printed)."""
    kept = {d.backup.backup_id for d in decisions if d.keep}
    current = backup_id
    while current in children:
        current = children[current]
        if current in kept:
            return current
    return "a kept incremental"


def apply(destination: Destination, job: str, known: dict[str, str | None] | None = None) -> Plan:
    """Plan over the destination's listing, then delete: each backup's manifest
    first, so that from that moment it no longer counts as complete. `known`: an
    incremental job's parents known so far (increments.known_parents)."""
    names = destination.names()
    parents = None if known is None else increments.parents_of(destination, job, names, known)
    planned = plan(job, names, destination.retention, dt.datetime.now(dt.UTC), parents)
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
            parents = None
            if config.jobs[job].incremental:
                known = increments.known_parents(config, job)
                parents = increments.parents_of(destination, job, names, known)
                increments.remember_parents(config, job, known)
            planned = plan(job, names, destination.retention, dt.datetime.now(dt.UTC), parents)
            show(planned)
            if not dry_run:
                _delete(destination, planned)
            return planned
        finally:
            destination.close()
