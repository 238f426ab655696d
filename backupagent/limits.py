"""How many runs at once: `[agent] max_parallel` in the daemon, and a destination's
`max_connections` across every process that runs jobs (the daemon, `run-job`, timers).

The daemon's runs pass a Gate: at most `limit` run, the others wait in the order they
came, and the daemon writes who runs and who waits to `state_dir/daemon.json` for
`backupagent list`. A destination's connections are slots: files under
`state_dir/locks/` of which a run holds one (flock) while it uses the destination, so
the kernel frees a slot whose holder died.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from backupagent.workers import Cancelled

STATUS_FILE = "daemon.json"
SLOT_POLL = 0.5  # seconds between looks for a free connection slot


class Gate:
    """At most `limit` runs at once; the others wait, first come first served."""

    def __init__(self, limit: int, changed: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.changed = changed  # told whenever `running` or `queued` changes
        self.running: list[str] = []
        self.queued: list[str] = []
        self._cond = threading.Condition()

    def enter(self, name: str, cancel: threading.Event) -> bool:
        """Wait for a place; False when `cancel` was set first."""
        log = structlog.get_logger("backupagent.daemon")
        with self._cond:
            self.queued.append(name)
            waited = not self._may_start(name)
            if waited:
                log.info(
                    "run queued: max_parallel runs are running",
                    job=name,
                    max_parallel=self.limit,
                    running=list(self.running),
                    position=len(self.queued),
                )
                self.changed()
            started = time.monotonic()
            while not self._may_start(name) and not cancel.is_set():
                self._cond.wait()
            self.queued.remove(name)
            if not cancel.is_set():
                self.running.append(name)
            self._cond.notify_all()
        self.changed()
        if waited and not cancel.is_set():
            log.info("run leaves the queue", job=name, waited=round(time.monotonic() - started, 1))
        return not cancel.is_set()

    def leave(self, name: str) -> None:
        with self._cond:
            self.running.remove(name)
            self._cond.notify_all()
        self.changed()

    def wake(self) -> None:
        """After a cancel or a new limit: the waiting look again."""
        with self._cond:
            self._cond.notify_all()

    def _may_start(self, name: str) -> bool:
        return len(self.running) < self.limit and self.queued[0] == name


# --- the daemon's status, for `list` --------------------------------------------------


@dataclass(frozen=True)
class DaemonStatus:
    """What the daemon (a live process) says it is doing."""

    pid: int
    running: list[str]
    queued: list[str]


_STATUS_WRITES = threading.Lock()  # two jobs starting at one second both write it


def write_status(state_dir: Path, running: Sequence[str], queued: Sequence[str]) -> None:
    """Replace daemon.json (temporary file and rename: a reader sees one or the other).
    One writer at a time, each through a temporary file of its own: the lists are read
    under the lock, so the last file written is the newest state."""
    with _STATUS_WRITES:
        body = {
            "pid": os.getpid(),
            "updated": dt.datetime.now(dt.UTC).isoformat(),
            "running": list(running),
            "queued": list(queued),
        }
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{STATUS_FILE}.", suffix=".tmp", dir=state_dir)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(body))
            os.replace(temp, state_dir / STATUS_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


def read_status(state_dir: Path) -> DaemonStatus | None:
    """The daemon's status, or None when no daemon is running (or it left no file)."""
    try:
        body = json.loads((state_dir / STATUS_FILE).read_text())
        status = DaemonStatus(int(body["pid"]), list(body["running"]), list(body["queued"]))
        os.kill(status.pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status


def clear_status(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATUS_FILE).unlink()


# --- a destination's connections --------------------------------------------------------


@contextlib.contextmanager
def connection_slots(
    state_dir: Path,
    limits: dict[str, int | None],
    cancel: threading.Event | None = None,
) -> Iterator[None]:
    """Hold one connection slot of each destination in `limits` (name -> its
    max_connections; None: no limit), waiting for one to free up. Destinations are
    taken in name order, so two jobs sharing two destinations cannot wait on each other."""
    held: list[int] = []
    try:
        for name, limit in sorted(limits.items()):
            if limit is not None:
                held.append(_take_slot(state_dir, name, limit, cancel))
        yield
    finally:
        for fd in held:
            os.close(fd)


def _take_slot(state_dir: Path, name: str, limit: int, cancel: threading.Event | None) -> int:
    directory = state_dir / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    log = structlog.get_logger("backupagent.run")
    said = False
    while True:
        for slot in range(limit):
            path = directory / f"destination-{name}.{slot}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if said:
                log.info("connection slot free", destination=name)
            return fd
        if not said:
            log.info(
                "waiting: the destination's connections are all in use",
                destination=name,
                max_connections=limit,
            )
            said = True
        if cancel is not None and cancel.wait(SLOT_POLL):
            raise Cancelled("the run was stopped while waiting for a connection")
        if cancel is None:
            time.sleep(SLOT_POLL)
