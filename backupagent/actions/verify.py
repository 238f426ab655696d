"""`backupagent verify` and scheduled verifies: stream a backup in (two volumes in the
spool at most), check every volume's SHA-256 against its manifest and read the archive
to the end, recorded as a run (the job's lock, log, history row and notifications:
recording.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import threading
from pathlib import Path
from typing import Any

import structlog

from backupagent import readback
from backupagent.archive import ArchiveStats
from backupagent.config import Config
from backupagent.destinations import open_destination
from backupagent.destinations.base import CutShort, DestinationError, SpoolFull
from backupagent.incoming import VolumeMismatch, VolumeStream
from backupagent.limits import connection_slots
from backupagent.manifest import Volume
from backupagent.outcome import Outcome, Trigger
from backupagent.recording import recorded_run
from backupagent.retrieve import (
    BackupInfo,
    Fetching,
    RestoreError,
    chain,
    choose,
    listed,
    private_directory,
    read_through,
)
from backupagent.workers import Cancelled


def verify(
    config: Config,
    job: str,
    wanted: str = "latest",
    cancel: threading.Event | None = None,
    identities: list[Any] | None = None,
    destination: str | None = None,
    sample: float | None = None,
) -> tuple[bool, str, Path]:
    """(passed, what was found, the run's log) for the backup on the job's destination
    `destination` (by default its first); with `sample`, only that percentage of its
    volumes, rotating (readback.py). Raises state.JobLocked while the job runs."""
    log = structlog.get_logger("backupagent.restore")
    with recorded_run(config, job, Trigger.VERIFY) as (result, _started):
        workdir = config.agent.spool_dir / job / f"verify-{result.run_id}"
        opened = open_destination(config, job, cancel=cancel, name=destination)
        held = contextlib.ExitStack()  # its connection slot
        try:
            limits = config.connection_limits([opened.name])
            held.enter_context(connection_slots(config.agent.state_dir, limits, cancel))
            backups, _ = listed(opened, job)
            backup = choose(backups, wanted)
            result.archive = backup.archive
            result.backup_id = backup.backup_id
            result.stats = ArchiveStats(archive_bytes=backup.size)
            links = chain(backups, backup)  # an incremental is checked with its chain
            private_directory(config.agent.spool_dir / job, "spool_dir")
            private_directory(workdir, "spool_dir")
            source = Fetching(opened, links, workdir)
            source.check_spool()
            of = f" and the {len(links) - 1} it builds on" if len(links) > 1 else ""
            state = readback.load(config.agent.state_dir, job)
            count = len(_volumes(source))
            if sample is None:
                found, bytes_read = _whole(source, identities)
                if bytes_read is not None:
                    result.stats.bytes_read = bytes_read
                read = list(range(count))
            else:
                found, read = _sampled(source, sample, state)
            now = dt.datetime.now(dt.UTC)
            state = readback.after(state, backup.backup_id, count, read, now)
            readback.save(config.agent.state_dir, job, state)
            if sample is not None:
                found += (
                    "; every volume of it has now been read back"
                    if not state.checked
                    else f"; {len(state.checked)} of {count} read back so far"
                )
            message = f"{backup.backup_id}{of}: {found}"
            result.outcome = Outcome.SUCCESS
        except (RestoreError, DestinationError) as exc:
            message = str(exc) or type(exc).__name__
            result.outcome = Outcome.FAILED
            result.error = message
        except Cancelled:
            message = "stopped before the verify ended"
            result.outcome = Outcome.ABORTED
            result.error = message
        finally:
            opened.close()
            held.close()
            shutil.rmtree(workdir, ignore_errors=True)
        ok = result.outcome == Outcome.SUCCESS
        (log.info if ok else log.error)(
            "verify finished", result=str(result.outcome), detail=message
        )
    return ok, message, result.log_path


def _whole(source: Fetching, identities: list[Any] | None) -> tuple[str, int | None]:
    """Every volume of the chain checked and each archive read to its end: (what was
    found, the bytes read; None when encrypted and no identity was given)."""
    members = read = 0
    for link in source.links:
        planned = read_through(source, link, identities)
        if planned is not None:
            members, read = members + planned.members, read + planned.bytes
    if any(link.encrypted for link in source.links) and not identities:
        return (
            "SHA-256 matches the manifest; encrypted, so its contents were not read (give "
            "--identity to read them to the end)",
            None,
        )
    return f"SHA-256 matches the manifest; {members} members, {read} bytes read to the end", read


def _volumes(source: Fetching) -> list[tuple[BackupInfo, Volume]]:
    return [(link, volume) for link in source.links for volume in link.volumes]


def _sampled(source: Fetching, percent: float, state: readback.ReadBack) -> tuple[str, list[int]]:
    """The share `readback.pick` chooses, downloaded and checked against the manifest:
    (what was found, the volume numbers read)."""
    volumes = _volumes(source)
    done = state.checked if state.backup_id == source.backup.backup_id else set()
    picks = readback.pick(len(volumes), percent, done)
    for link in source.links:  # each backup's picked volumes, in order
        chosen = [v for n, (owner, v) in enumerate(volumes) if owner is link and n in picks]
        if chosen:
            with VolumeStream(source.destination, chosen, source.workdir) as stream:
                try:
                    stream.drain()
                except (VolumeMismatch, SpoolFull, CutShort) as exc:
                    raise RestoreError(str(exc)) from None
    found = (
        f"{len(picks)} of {len(volumes)} volumes read back (a {percent:g}% sample), "
        "SHA-256 matches the manifest"
    )
    return found, picks
