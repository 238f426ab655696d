"""Backup names on the server, and which backups retention deletes.

Pure functions over file names: nothing here talks to a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ARCHIVE_SUFFIX = ".tar.zst"
MANIFEST_SUFFIX = ".manifest.json"
TEMP_SUFFIX = ".partial"
RUN_ID_PATTERN = r"(?P<stamp>\d{8}T\d{6}\.\d{3}Z)-(?P<nonce>[0-9a-f]{6})"


def archive_name(backup_id: str) -> str:
    return backup_id + ARCHIVE_SUFFIX


def manifest_name(backup_id: str) -> str:
    return backup_id + MANIFEST_SUFFIX


def temp_name(final_name: str) -> str:
    """The name a file is uploaded under before it is complete; never looks like a backup."""
    return final_name + TEMP_SUFFIX


@dataclass(frozen=True, order=True)
class RemoteBackup:
    """A complete backup of one job: its manifest is on the server."""

    stamp: str  # UTC, YYYYmmddTHHMMSS.mmmZ: sorts chronologically
    backup_id: str
    has_archive: bool


def complete_backups(job: str, names: list[str]) -> list[RemoteBackup]:
    """This job's complete backups among the file names in the directory, oldest first.

    Only names of the exact form `JOB-STAMP-NONCE.manifest.json` count, so a job
    named `www` never claims the backups of a job named `www-db`.
    """
    pattern = re.compile(rf"^{re.escape(job)}-{RUN_ID_PATTERN}{re.escape(MANIFEST_SUFFIX)}$")
    present = set(names)
    found = []
    for name in names:
        match = pattern.match(name)
        if match:
            backup_id = name.removesuffix(MANIFEST_SUFFIX)
            found.append(
                RemoteBackup(match["stamp"], backup_id, archive_name(backup_id) in present)
            )
    return sorted(found)


def select_for_deletion(backups: list[RemoteBackup], keep: int) -> list[RemoteBackup]:
    """The oldest complete backups beyond the newest `keep`; the newest is never chosen."""
    ordered = sorted(backups)
    keep = max(keep, 1)
    return ordered[: max(len(ordered) - keep, 0)]
