"""Per-job state on this host: the run lock (the run history joins it later)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class JobLocked(Exception):
    """Another run of the same job holds the lock."""


@contextlib.contextmanager
def job_lock(state_dir: Path, job: str) -> Iterator[None]:
    """Hold `state_dir/locks/JOB.lock` with flock for the duration of a run.

    The kernel drops a flock when its holder dies, so a crash never leaves a stale lock.
    """
    path = state_dir / "locks" / f"{job}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobLocked(f"job '{job}' is already running (lock {path} is held)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
