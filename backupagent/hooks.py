"""Commands run around a backup: a job's `before`, `after` and `on_failure`.

Each runs by /bin/sh in a process group of its own, killed whole at its timeout. Its
environment is built, not inherited: the agent's may hold secrets (`password_env`),
so a hook sees only PATH, HOME, LANG, LC_ALL, TZ, the BACKUPAGENT_* variables that
describe the run, and the variables its `env` names. Its output (stdout and stderr)
goes to the run's log, a line an event, bounded.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import structlog

from backupagent import process
from backupagent.config import Hook

PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOGGED_LINES = 1000  # lines of a hook's output logged; the rest are counted
LINE_BYTES = 4096  # a longer line is cut
TAIL_LINES = 5  # last lines kept as the evidence of a failed hook


@dataclass(frozen=True)
class HookRun:
    """How a hook ended."""

    name: str  # before | after | on_failure
    command: str
    returncode: int | None  # None: killed at its timeout
    seconds: float
    tail: tuple[str, ...]  # its last lines of output

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def verdict(self) -> str:
        if self.returncode is None:
            return f"the {self.name} hook was killed after its timeout ({self.seconds:.0f} s)"
        return f"the {self.name} hook failed (exit code {self.returncode})"


def environment(hook: Hook, variables: dict[str, str]) -> dict[str, str]:
    """What the hook's process sees: PASSED_ON, what `env` names, then `variables`."""
    env = {k: os.environ[k] for k in (*PASSED_ON, *hook.env) if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    return {**env, **variables}


def run_hook(
    name: str, hook: Hook, variables: dict[str, str], cancel: threading.Event | None = None
) -> HookRun:
    """Run `hook` to its end or its timeout, its output logged line by line."""
    log = structlog.get_logger("backupagent.hook").bind(hook=name)
    log.info(f"running the {name} hook", command=hook.run, timeout=hook.timeout)
    lines = _Lines(log)
    started = time.monotonic()
    finished = process.stream(
        ["/bin/sh", "-c", hook.run],
        lines.feed,
        env=environment(hook, variables),
        cancel=cancel,
        timeout=hook.timeout,
        merge_stderr=True,
        chunk=64 << 10,
    )
    lines.close()
    if finished.output_left_open:
        log.warning(
            f"the {name} hook ended, but a process it started keeps its output open:"
            " not read any further (close its stdout and stderr, e.g. >/dev/null 2>&1)",
        )
    result = HookRun(
        name,
        hook.run,
        None if finished.timed_out else finished.returncode,
        time.monotonic() - started,
        tuple(lines.tail),
    )
    (log.info if result.ok else log.error)(
        f"the {name} hook ended",
        returncode=result.returncode,
        seconds=round(result.seconds, 3),
        **({"lines_not_logged": lines.dropped} if lines.dropped else {}),
    )
    return result


class _Lines:
    """A hook's output cut into lines: the first LOGGED_LINES logged, the last kept."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger) -> None:
        self.log = log
        self.pending = b""
        self.logged = 0
        self.dropped = 0
        self.tail: list[str] = []

    def feed(self, data: bytes) -> None:
        *complete, self.pending = (self.pending + data).split(b"\n")
        if len(self.pending) > LINE_BYTES:  # no newline in sight: cut it here
            complete.append(self.pending)
            self.pending = b""
        for line in complete:
            self._line(line[:LINE_BYTES].decode("utf-8", "replace").rstrip("\r"))

    def close(self) -> None:
        if self.pending:
            self._line(self.pending[:LINE_BYTES].decode("utf-8", "replace"))
            self.pending = b""

    def _line(self, text: str) -> None:
        self.tail = [*self.tail[-(TAIL_LINES - 1) :], text]
        if self.logged < LOGGED_LINES:
            self.logged += 1
            self.log.info("hook output", line=text)
        else:
            self.dropped += 1
