"""structlog set-up: one JSON-lines debug log per run, human-readable lines on stderr.

A run binds its context (job, run id) once with `run_log`; every event logged
anywhere during that run, in that thread, lands in the run's file with those fields.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO

import structlog

from backupagent.text import printable

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_run_file: ContextVar[TextIO | None] = ContextVar("backupagent_run_file", default=None)
_console_lock = threading.Lock()
# stream None means "whatever sys.stderr is now", so rich's progress display can redirect it
_console: dict[str, Any] = {"stream": None, "level": LEVELS["info"], "renderer": None}


def configure(verbose: bool = False, stream: TextIO | None = None) -> None:
    """Route events to the current run's file (everything) and to stderr (info and up)."""
    _console["stream"] = stream
    _console["level"] = LEVELS["debug" if verbose else "info"]
    _console["renderer"] = structlog.dev.ConsoleRenderer(
        colors=(stream or sys.stderr).isatty(), pad_event_to=0
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # the traceback itself, not exc_info: true
            _emit,
        ],
        cache_logger_on_first_use=False,
    )


def _emit(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Final processor: write the event to both sinks, then drop it."""
    run_file = _run_file.get()
    if run_file is not None:
        run_file.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
        run_file.flush()
    if LEVELS.get(event.get("level", "info"), 20) >= _console["level"]:
        # the suggestion's text is printed whole at the end of run-job; keep this line short
        shown = {
            k: printable(v) if isinstance(v, str) else v
            for k, v in event.items()
            if k not in ("run_id", "text", "evidence")
        }
        renderer = _console["renderer"] or structlog.dev.ConsoleRenderer(colors=False)
        with _console_lock:
            print(renderer(None, "", shown), file=_console["stream"] or sys.stderr, flush=True)
    raise structlog.DropEvent


@contextlib.contextmanager
def run_log(log_dir: Path, job: str, run_id: str) -> Iterator[Path]:
    """Open `log_dir/JOB/RUN_ID.jsonl` and bind job and run id for the duration of a run."""
    path = log_dir / job / f"{run_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        # a byte a server sent that is not UTF-8 is kept as a surrogate; written as
        # its \udcXX escape it is still valid JSON and reads back as the same text
        path.open("w", encoding="utf-8", errors="backslashreplace") as handle,
        structlog.contextvars.bound_contextvars(job=job, run_id=run_id),
    ):
        token = _run_file.set(handle)
        try:
            yield path
        finally:
            _run_file.reset(token)


def run_logs(log_dir: Path, job: str) -> list[Path]:
    """The job's run logs, oldest first (run ids start with a UTC timestamp)."""
    return sorted((log_dir / job).glob("*.jsonl"))


def prune_run_logs(log_dir: Path, job: str, keep: int) -> None:
    """Delete the job's oldest run logs beyond the newest `keep`."""
    for path in run_logs(log_dir, job)[:-keep]:
        path.unlink(missing_ok=True)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Parse one run log; a line that is not JSON (a torn write) is skipped."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events
