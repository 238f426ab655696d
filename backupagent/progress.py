"""Live progress for `run-job` on a terminal (rich); nothing when not on a TTY."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from backupagent import runner


@contextlib.contextmanager
def terminal_progress(stream: TextIO) -> Iterator[runner.Progress | None]:
    """Yield runner callbacks drawing a progress display, or None when `stream` is no TTY."""
    if not stream.isatty():
        yield None
        return
    display = Progress(
        TextColumn("{task.description:10}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    )
    archive = display.add_task("archiving", total=None)
    upload = display.add_task("uploading", total=None, visible=False)
    with display:
        yield runner.Progress(
            archived=lambda n: display.advance(archive, n),
            upload_started=lambda total: display.update(upload, total=total, visible=True),
            uploaded=lambda n: display.advance(upload, n),
        )
