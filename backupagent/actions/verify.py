"""`backupagent verify` and scheduled verifies: stream a backup in (two volumes in the
spool at most), check every volume's SHA-256 against its manifest and read the archive
to the end, recorded as a run (the job's lock, log, history row and notifications:
recording.py)."""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any

import structlog

from backupagent.archive import ArchiveStats
from backupagent.config import Config
from backupagent.destinations import open_destination
from backupagent.destinations.base import DestinationError
from backupagent.limits import connection_slots
from backupagent.outcome import Outcome, Trigger
from backupagent.recording import recorded_run
from backupagent.retrieve import (
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
) -> tuple[bool, str, Path]:
    """(passed, what was found, the run's log) for the backup on the job's destination
    `destination` (by default its first). Raises state.JobLocked while the job runs."""
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
            members = read = 0
            for link in links:
                planned = read_through(source, link, identities)
                if planned is not None:
                    members, read = members + planned.members, read + planned.bytes
            of = f" and the {len(links) - 1} it builds on" if len(links) > 1 else ""
            if any(link.encrypted for link in links) and not identities:
                message = (
                    f"{backup.backup_id}{of}: SHA-256 matches the manifest; encrypted, so "
                    "its contents were not read (give --identity to read them to the end)"
                )
            else:
                message = (
                    f"{backup.backup_id}{of}: SHA-256 matches the manifest; {members} "
                    f"members, {read} bytes read to the end"
                )
                result.stats.bytes_read = read
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
