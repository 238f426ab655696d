"""Backup names on the server, and which backups retention deletes.

Pure functions over file names: nothing here talks to a server.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from backupagent.config import FtpDestination

ARCHIVE_SUFFIX = ".tar.zst"
MANIFEST_SUFFIX = ".manifest.json"
TEMP_SUFFIX = ".partial"
RUN_ID_PATTERN = r"(?P<stamp>\d{8}T\d{6}\.\d{3}Z)-(?P<nonce>[0-9a-f]{6})"


def archive_name(backup_id: str) -> str:
    return backup_id + ARCHIVE_SUFFIX


def manifest_name(backup_id: str) -> str:
    return backup_id + MANIFEST_SUFFIX


def temp_name(final_name: str, tag: str = "") -> str:
    """The name a file is uploaded under before it is complete; never looks like a backup.

    `tag` makes another one for the same file: a server may still hold (and lock, as
    vsftpd does) the first while its own timeout for a failed attempt runs.
    """
    return final_name + (f".{tag}" if tag else "") + TEMP_SUFFIX


@dataclass(frozen=True, order=True)
class RemoteBackup:
    """A complete backup of one job: its manifest is on the server."""

    stamp: str  # UTC, YYYYmmddTHHMMSS.mmmZ: sorts chronologically
    backup_id: str
    data_files: tuple[str, ...] = ()  # the archive (.tar.zst, or .tar.zst.age) on the server

    @property
    def has_archive(self) -> bool:
        return bool(self.data_files)

    @property
    def names(self) -> list[str]:
        """Everything of this backup, manifest first: deleting it first un-completes it."""
        return [manifest_name(self.backup_id), *self.data_files]


def complete_backups(job: str, names: list[str]) -> list[RemoteBackup]:
    """This job's complete backups among the file names in the directory, oldest first.

    Only names of the exact form `JOB-STAMP-NONCE.manifest.json` count, so a job
    named `www` never claims the backups of a job named `www-db`.
    """
    pattern = re.compile(rf"^{re.escape(job)}-{RUN_ID_PATTERN}{re.escape(MANIFEST_SUFFIX)}$")
    found = []
    for name in names:
        match = pattern.match(name)
        if match:
            backup_id = name.removesuffix(MANIFEST_SUFFIX)
            data = tuple(
                sorted(
                    n
                    for n in names
                    if n.startswith(backup_id + ARCHIVE_SUFFIX) and not n.endswith(TEMP_SUFFIX)
                )
            )
            found.append(RemoteBackup(match["stamp"], backup_id, data))
    return sorted(found)


@dataclass(frozen=True)
class Policy:
    """How many backups to keep: the last `keep`, plus the newest of each of the last
    `daily` days, `weekly` ISO weeks and `monthly` months (grandfather-father-son)."""

    keep: int = 1
    daily: int = 0
    weekly: int = 0
    monthly: int = 0


@dataclass(frozen=True)
class Decision:
    backup: RemoteBackup
    keep: bool
    reasons: tuple[str, ...]  # why it is kept, or why it goes


def when(backup: RemoteBackup) -> dt.datetime:
    return dt.datetime.strptime(backup.stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.UTC)


_PERIODS: tuple[tuple[str, str, Callable[[dt.datetime], object]], ...] = (
    ("daily", "day", lambda t: t.date()),
    ("weekly", "week", lambda t: t.isocalendar()[:2]),
    ("monthly", "month", lambda t: (t.year, t.month)),
)


def decide(backups: list[RemoteBackup], policy: Policy) -> list[Decision]:
    """Keep or delete each complete backup, newest first, with the reasons.

    Only complete backups are considered (incomplete ones never count as kept), and
    the newest one is always kept, whatever the policy says.
    """
    ordered = sorted(backups, reverse=True)
    reasons: dict[str, list[str]] = {b.backup_id: [] for b in ordered}
    for i, backup in enumerate(ordered[: max(policy.keep, 1)]):
        reasons[backup.backup_id].append("newest" if i == 0 else f"one of the last {policy.keep}")
    for attribute, period, key in _PERIODS:
        wanted = getattr(policy, attribute)
        seen: list[object] = []
        for backup in ordered:
            bucket = key(when(backup))
            if bucket in seen:
                continue
            if len(seen) >= wanted:
                break
            seen.append(bucket)
            reasons[backup.backup_id].append(f"newest of its {period} ({attribute} = {wanted})")
    return [
        Decision(
            b, bool(reasons[b.backup_id]), tuple(reasons[b.backup_id]) or ("beyond the policy",)
        )
        for b in ordered
    ]


def retention_policy(dest: FtpDestination) -> Policy:
    return Policy(dest.keep, dest.keep_daily, dest.keep_weekly, dest.keep_monthly)


def select_for_deletion(backups: list[RemoteBackup], keep: int | Policy) -> list[RemoteBackup]:
    """The complete backups the policy does not keep, oldest first; never the newest."""
    policy = keep if isinstance(keep, Policy) else Policy(keep=keep)
    return sorted(d.backup for d in decide(backups, policy) if not d.keep)


def stale_partials(job: str, names: list[str], now: dt.datetime, grace: dt.timedelta) -> list[str]:
    """This job's temporary uploads whose run started longer than `grace` ago.

    The run's start time is in the name, so no server clock or MDTM is needed; a
    younger one may belong to a run still uploading, and is left alone.
    """
    pattern = re.compile(rf"^{re.escape(job)}-{RUN_ID_PATTERN}\..*{re.escape(TEMP_SUFFIX)}$")
    stale = []
    for name in names:
        match = pattern.match(name)
        if match:
            started = dt.datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S.%fZ")
            if now - started.replace(tzinfo=dt.UTC) > grace:
                stale.append(name)
    return sorted(stale)


def incomplete(job: str, names: list[str]) -> list[str]:
    """This job's files that are not part of a complete backup (partials, orphans)."""
    prefix = re.compile(rf"^{re.escape(job)}-{RUN_ID_PATTERN}\.")
    complete = {b.backup_id for b in complete_backups(job, names)}
    return sorted(
        n
        for n in names
        if prefix.match(n) and n.split(".tar.zst")[0].split(".manifest.json")[0] not in complete
    )
