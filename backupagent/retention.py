"""Backup names on the server, and which backups retention deletes.

Pure functions over file names: nothing here talks to a server.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from backupagent.config import Retention

ARCHIVE_SUFFIX = ".tar.zst"
MANIFEST_SUFFIX = ".manifest.json"
INDEX_SUFFIX = ".index.zst"  # an incremental job's index of the backup (incremental.py)
CONTENTS_SUFFIX = ".contents.zst"  # every backup's content index (contents.py), + .age
TEMP_SUFFIX = ".partial"
RUN_ID_PATTERN = r"(?P<stamp>\d{8}T\d{6}\.\d{3}Z)-(?P<nonce>[0-9a-f]{6})"


def archive_name(backup_id: str) -> str:
    return backup_id + ARCHIVE_SUFFIX


def manifest_name(backup_id: str) -> str:
    return backup_id + MANIFEST_SUFFIX


def index_name(backup_id: str, encrypted: bool = False) -> str:
    return backup_id + INDEX_SUFFIX + (".age" if encrypted else "")


def contents_name(backup_id: str, encrypted: bool = False) -> str:
    return backup_id + CONTENTS_SUFFIX + (".age" if encrypted else "")


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


@dataclass(frozen=True)
class Name:
    """A file name of this job's backups, taken apart."""

    backup_id: str
    stamp: str
    manifest: bool  # the manifest (else a volume or archive)
    temporary: bool  # an upload not yet renamed (`.partial`)


def name_pattern(job: str) -> re.Pattern[str]:
    """Exactly the names this agent gives the files of `job`'s backups: the job name, a
    dash, a run id, then a manifest or archive suffix (and `.partial`). A job named
    `www` never matches the files of `www-db`, nor of `www-20240101T000000.000Z-abcdef.x`."""
    return re.compile(
        rf"^(?P<id>{re.escape(job)}-{RUN_ID_PATTERN})"
        rf"(?P<kind>{re.escape(MANIFEST_SUFFIX)}|{re.escape(INDEX_SUFFIX)}(?:\.age)?"
        rf"|{re.escape(CONTENTS_SUFFIX)}(?:\.age)?"
        rf"|{re.escape(ARCHIVE_SUFFIX)}(?:\.age)?(?:\.\d{{4}})?)"
        rf"(?P<temp>(?:\.(?:passive|active))?{re.escape(TEMP_SUFFIX)})?$"
    )


def parse_names(job: str, names: list[str]) -> dict[str, Name]:
    """Each of `names` that belongs to `job`'s backups, parsed once (linear)."""
    pattern = name_pattern(job)
    parsed = {}
    for name in names:
        match = pattern.match(name)
        if match:
            parsed[name] = Name(
                match["id"], match["stamp"], match["kind"] == MANIFEST_SUFFIX, bool(match["temp"])
            )
    return parsed


def complete_backups(job: str, names: list[str]) -> list[RemoteBackup]:
    """This job's complete backups among the file names in the directory, oldest first:
    those whose manifest is there, each with its renamed data files."""
    parsed = parse_names(job, names)
    stamps = {p.backup_id: p.stamp for p in parsed.values() if p.manifest and not p.temporary}
    data: dict[str, list[str]] = {backup_id: [] for backup_id in stamps}
    for name, part in parsed.items():
        if not part.manifest and not part.temporary and part.backup_id in data:
            data[part.backup_id].append(name)
    return sorted(
        RemoteBackup(stamps[backup_id], backup_id, tuple(sorted(files)))
        for backup_id, files in data.items()
    )


@dataclass(frozen=True)
class Policy:
    """How many backups to keep: the last `keep`, plus the newest of each of the last
    `daily` days, `weekly` ISO weeks, `monthly` months and `yearly` years
    (grandfather-father-son), plus every one made `within` of now."""

    keep: int = 1
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: dt.timedelta | None = None


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
    ("yearly", "year", lambda t: t.year),
)


def decide(
    backups: list[RemoteBackup], policy: Policy, now: dt.datetime | None = None
) -> list[Decision]:
    """Keep or delete each complete backup, newest first, with the reasons.

    Only complete backups are considered (incomplete ones never count as kept), and
    the newest one is always kept, whatever the policy says. `within` counts from `now`,
    this host's clock, not from the newest backup: backups a hostile server invents
    (dated today, or in the future) cannot push the real ones of the period out, as
    they can push them out of `keep` N.
    """
    ordered = sorted(backups, reverse=True)
    reasons: dict[str, list[str]] = {b.backup_id: [] for b in ordered}
    for i, backup in enumerate(ordered[: max(policy.keep, 1)]):
        reasons[backup.backup_id].append("newest" if i == 0 else f"one of the last {policy.keep}")
    for attribute, period, key in _PERIODS:
        wanted = getattr(policy, attribute)
        seen: set[object] = set()
        for backup in ordered:
            bucket = key(when(backup))
            if bucket in seen:
                continue
            if len(seen) >= wanted:
                break
            seen.add(bucket)
            reasons[backup.backup_id].append(f"newest of its {period} ({attribute} = {wanted})")
    if policy.within is not None:
        start = (now or dt.datetime.now(dt.UTC)) - policy.within
        for backup in ordered:
            if when(backup) >= start:
                reasons[backup.backup_id].append(f"made within {_span(policy.within)}")
    return [
        Decision(
            b, bool(reasons[b.backup_id]), tuple(reasons[b.backup_id]) or ("beyond the policy",)
        )
        for b in ordered
    ]


def _span(within: dt.timedelta) -> str:
    days, seconds = within.days, within.seconds
    return f"{days} days" if not seconds else f"{days * 24 + seconds // 3600} hours"


def retention_policy(dest: Retention) -> Policy:
    return Policy(
        dest.keep,
        dest.keep_daily,
        dest.keep_weekly,
        dest.keep_monthly,
        dest.keep_yearly,
        dest.keep_within,
    )


def select_for_deletion(backups: list[RemoteBackup], keep: int | Policy) -> list[RemoteBackup]:
    """The complete backups the policy does not keep, oldest first; never the newest."""
    policy = keep if isinstance(keep, Policy) else Policy(keep=keep)
    return sorted(d.backup for d in decide(backups, policy) if not d.keep)


def stale_leftovers(job: str, names: list[str], now: dt.datetime, grace: dt.timedelta) -> list[str]:
    """This job's files that belong to no complete backup (temporary uploads, and
    volumes renamed by a run that never wrote its manifest) of runs that started
    longer than `grace` ago.

    The run's start time is in the name, so no server clock or MDTM is needed; a
    younger one may belong to a run still uploading, and is left alone.
    """
    parsed = parse_names(job, names)
    complete = {p.backup_id for p in parsed.values() if p.manifest and not p.temporary}
    stale = []
    for name, part in parsed.items():
        if part.backup_id in complete and not part.temporary:
            continue
        started = dt.datetime.strptime(part.stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.UTC)
        if now - started > grace:
            stale.append(name)
    return sorted(stale)


def incomplete(job: str, names: list[str]) -> list[str]:
    """This job's files that are not part of a complete backup (partials, orphans)."""
    parsed = parse_names(job, names)
    complete = {p.backup_id for p in parsed.values() if p.manifest and not p.temporary}
    return sorted(n for n, p in parsed.items() if p.temporary or p.backup_id not in complete)
