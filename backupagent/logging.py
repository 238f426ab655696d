"""structlog set-up: one JSON-lines debug log per run, human-readable lines on stderr.

A run binds its context (job, run id) once with `run_log`; every event logged
anywhere during that run, in that thread, lands in the run's file with those fields.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
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
_console: dict[str, Any] = {
    "stream": None,
    "level": LEVELS["info"],
    "renderer": None,
    "journal": False,
}


# syslog priorities that journald reads from a `<N>` at the start of each line
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def to_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal: systemd sets JOURNAL_STREAM to the device and
    inode of the stream it connected (a redirected stderr no longer matches)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # a StringIO, a closed stream
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def configure(verbose: bool = False, stream: TextIO | None = None) -> None:
    """Route events to the current run's file (everything) and to stderr (info and up).

    Under systemd, each stderr line starts with its priority (`<3>` an error) and has
    no timestamp of its own (the journal has one), so `journalctl -p err` finds failures.
    The standard library's logging (APScheduler's) goes to the same lines.
    """
    console = stream or sys.stderr
    _console["stream"] = stream
    _console["level"] = LEVELS["debug" if verbose else "info"]
    _console["journal"] = to_journal(console)
    _console["renderer"] = structlog.dev.ConsoleRenderer(
        colors=console.isatty() and not _console["journal"], pad_event_to=0
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _Stdlib)]
    root.addHandler(_Stdlib())
    root.setLevel(logging.WARNING)  # libraries' warnings and errors, not their chatter
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
    level = event.get("level", "info")
    if LEVELS.get(level, 20) >= _console["level"]:
        # the suggestion's text is printed whole at the end of run-job; keep this line short
        hidden = ("run_id", "text", "evidence", "timestamp" if _console["journal"] else "")
        shown = {
            k: printable(v) if isinstance(v, str) else v
            for k, v in event.items()
            if k not in hidden
        }
        renderer = _console["renderer"] or structlog.dev.ConsoleRenderer(colors=False)
        _console_line(level, renderer(None, "", shown))
    raise structlog.DropEvent


def _console_line(level: str, text: str) -> None:
    """One event on stderr; in the journal, every line of it with the priority."""
    if _console["journal"]:
        prefix = f"<{PRIORITIES.get(level, 6)}>"
        text = "\n".join(prefix + line for line in text.splitlines() or [""])
    with _console_lock:
        print(text, file=_console["stream"] or sys.stderr, flush=True)


class _Stdlib(logging.Handler):
    """A library's log record (APScheduler's, mostly) as one of our stderr lines."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        if level not in LEVELS:
            level = "warning" if record.levelno >= logging.WARNING else "info"
        try:
            text = printable(f"{record.name}: {record.getMessage()}")
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            stamp = "" if _console["journal"] else f"{_utc_now()} "
            _console_line(level, f"{stamp}[{level:<9}] {text}")
        except Exception:  # as logging's own handlers: never raise from here
            self.handleError(record)


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


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
