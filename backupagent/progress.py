"""Progress of a run: a live display on a terminal (rich), progress events otherwise."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

import structlog


@dataclass
class Progress:
    """Callbacks a front end may pass to watch a run; all optional."""

    archived: Callable[[int], None] | None = None
    # the upload began (None: total not known yet), or the total became known
    upload_started: Callable[[int | None], None] | None = None
    uploaded: Callable[[int], None] | None = None
    entry_archived: Callable[[], None] | None = None  # a file, directory, link or dump


def logged_progress(interval: float) -> Progress:
    """Without a terminal: a `progress` event at most every `interval` seconds."""
    log = structlog.get_logger("backupagent.progress")
    state = {
        "archived": 0,
        "entries": 0,
        "uploaded": 0,
        "total": 0,
        "last": time.monotonic(),
        "start": 0.0,
    }

    def report(phase: str) -> None:
        now = time.monotonic()
        if now - state["last"] < interval:
            return
        state["last"] = now
        fields: dict[str, object] = {
            "phase": phase,
            "entries_archived": state["entries"],
            "bytes_archived": state["archived"],
        }
        if phase == "upload":
            done, total = state["uploaded"], state["total"]
            rate = done / max(now - state["start"], 1e-6)
            fields.update(bytes_uploaded=done, of=total, rate_bytes_per_second=int(rate))
            if rate > 0 and total:
                fields["eta_seconds"] = int((total - done) / rate)
        log.info("progress", **fields)

    def archived(n: int) -> None:
        state["archived"] += n
        report("archive")

    def entry_archived() -> None:
        state["entries"] += 1

    def upload_started(total: int | None) -> None:
        if total is not None:
            state["total"] = total
        state["start"] = state["start"] or time.monotonic()

    def uploaded(n: int) -> None:
        state["uploaded"] += n
        report("upload")

    return Progress(archived, upload_started, uploaded, entry_archived)


@contextlib.contextmanager
def terminal_progress(stream: TextIO) -> Iterator[Progress | None]:
    """Callbacks drawing a live display on a terminal; None otherwise, so the run logs
    progress events at its configured `progress_interval`."""
    if not stream.isatty():
        yield None
        return
    from rich import progress as rich_progress
    from rich.console import Console

    display = rich_progress.Progress(
        rich_progress.TextColumn("{task.description:28}"),
        rich_progress.BarColumn(),
        rich_progress.DownloadColumn(binary_units=True),
        rich_progress.TransferSpeedColumn(),
        rich_progress.TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    )
    archive = display.add_task("archiving", total=None)
    upload = display.add_task("uploading", total=None, visible=False)
    entries = [0]

    def entry_archived() -> None:
        entries[0] += 1
        display.update(archive, description=f"archiving ({entries[0]} entries)")

    with display:
        yield Progress(
            archived=lambda n: display.advance(archive, n),
            upload_started=lambda total: (
                display.update(upload, visible=True)
                if total is None
                else display.update(upload, visible=True, total=total)
            ),
            uploaded=lambda n: display.advance(upload, n),
            entry_archived=entry_archived,
        )
