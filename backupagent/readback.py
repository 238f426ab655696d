"""`verify --sample PERCENT`: a rotating share of the newest backup's volumes read back.

A large site's backup is read back in full over a period instead of in one verify: each
sampled verify downloads PERCENT of the volumes (of the backup and the chain it builds
on), the ones not read back since that backup became the newest first, and checks each
against its manifest's SHA-256. Once every volume of one backup has been read back
(by one full verify, or by the rotation) the backup was read back in full; when that
last happened is the job's metric. A volume in the middle of the zstd stream cannot be
decompressed alone: a sample checks the bytes the server holds, a full verify also
reads the archive to its end.

`pick` decides (pure, table-driven tested); the rest keeps its state, one small JSON
file per job that only the agent writes (`state_dir/readback/JOB.json`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_STATE = 1 << 20  # bytes: a state file larger than this is ignored (read as none)


@dataclass
class ReadBack:
    """What was read back of the job's newest backup, and when one was last whole."""

    backup_id: str = ""
    checked: set[int] = field(default_factory=set)  # volume numbers, 0-based, of the chain
    full_at: str | None = None  # ISO time a backup was last read back in full

    def full_timestamp(self) -> float | None:
        return dt.datetime.fromisoformat(self.full_at).timestamp() if self.full_at else None


def pick(count: int, percent: float, checked: set[int]) -> list[int]:
    """Which of `count` volumes a verify of `percent` reads: ceil(count * percent / 100)
    of them (at least one), those not yet `checked` first, in order; when fewer remain,
    the rotation starts again from the first."""
    wanted = min(count, max(1, math.ceil(count * percent / 100)))
    fresh = [n for n in range(count) if n not in checked]
    again = [n for n in range(count) if n in checked]
    return (fresh + again)[:wanted]


def after(
    state: ReadBack, backup_id: str, count: int, read: list[int], now: dt.datetime
) -> ReadBack:
    """The state once the volumes `read` of `backup_id` (of `count`) were read back and
    matched: a newer backup starts the rotation again; all read means whole at `now`."""
    checked = set(state.checked) if state.backup_id == backup_id else set()
    checked.update(read)
    full_at = state.full_at
    if checked >= set(range(count)):
        full_at = now.isoformat(timespec="seconds")
        checked = set()  # the next rotation starts over
    return ReadBack(backup_id, checked, full_at)


def path(state_dir: Path, job: str) -> Path:
    return state_dir / "readback" / f"{job}.json"


def load(state_dir: Path, job: str) -> ReadBack:
    """The job's read-back state; none (a fresh start) if missing or unreadable."""
    try:
        with path(state_dir, job).open("rb") as handle:
            data = handle.read(MAX_STATE + 1)
        if len(data) > MAX_STATE:
            return ReadBack()
        raw = json.loads(data)
        checked = {int(n) for n in raw.get("checked", [])}
        full_at = raw.get("full_at")
        if full_at is not None:
            dt.datetime.fromisoformat(full_at)  # a time, or ValueError
        return ReadBack(str(raw.get("backup_id", "")), checked, full_at)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return ReadBack()


def save(state_dir: Path, job: str, state: ReadBack) -> None:
    """Write it atomically (a temp file renamed), private to the agent."""
    target = path(state_dir, job)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    data = {
        "backup_id": state.backup_id,
        "checked": sorted(state.checked),
        "full_at": state.full_at,
    }
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{job}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
