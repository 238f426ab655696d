"""The one place the agent runs other programs (dump tools, database clients).

Secrets never go on a command line: `secret_fd` hands them to a child through an
inherited pipe, which the child reads as a file (`/dev/fd/N`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import structlog

from backupagent.workers import Cancelled, Worker, on_cancel

STDERR_KEEP = 64 * 1024  # bytes of a tool's stderr kept for the log and the advice


class ToolMissing(Exception):
    """None of the named programs is on PATH."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"{' or '.join(names)} not found on PATH")
        self.names = list(names)


@dataclass(frozen=True)
class Finished:
    """How a child process ended."""

    argv: tuple[str, ...]
    returncode: int
    stderr: str
    timed_out: bool = False  # killed (with its process group) at the timeout


def find_tool(*names: str) -> str:
    """The first of `names` found on PATH (e.g. mariadb-dump, else mysqldump)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissing(names)


def secret_fd(content: str) -> int:
    """A pipe's read end holding `content`; pass it in `pass_fds` and close it afterwards."""
    data = content.encode()
    if len(data) > 60_000:  # must fit the pipe buffer, or writing would block
        raise ValueError("secret too large for a pipe")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
    finally:
        os.close(write_end)
    return read_end


def stream(
    argv: Sequence[str],
    sink: Callable[[bytes], None],
    *,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    chunk: int = 1 << 20,
    cancel: threading.Event | None = None,
    stdin: BinaryIO | None = None,
    timeout: float | None = None,
    merge_stderr: bool = False,
) -> Finished:
    """Run `argv`, handing its stdout to `sink` chunk by chunk; keep the tail of stderr.

    The command line is logged (it never holds a secret); stderr is read on a thread
    so a chatty tool cannot block on a full pipe (with `merge_stderr` it goes to `sink`
    too). Setting `cancel` kills the child and raises Cancelled. With `timeout` the
    child runs in a process group of its own, all of it killed when the time is up
    (`timed_out`): a shell's children do not outlive it.
    """
    log = structlog.get_logger("backupagent.process")
    log.debug("running", argv=list(argv))
    proc = subprocess.Popen(
        list(argv),
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        env=env,
        pass_fds=tuple(pass_fds),
        start_new_session=timeout is not None,
    )
    assert proc.stdout is not None
    errors = bytearray()

    def drain() -> None:
        assert proc.stderr is not None
        while data := proc.stderr.read(4096):
            errors.extend(data)
            del errors[:-STDERR_KEEP]

    reader = Worker("stderr", drain).start() if proc.stderr is not None else None
    expired = threading.Event()

    def kill_group() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill_group) if timeout is not None else None
    if timer is not None:
        timer.start()
    try:
        with on_cancel(cancel, kill_group if timer is not None else proc.kill):
            while data := proc.stdout.read(chunk):
                sink(data)
    except BaseException:
        proc.kill()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        proc.stdout.close()
        proc.wait()
        if reader is not None and proc.stderr is not None:
            reader.wait()
            proc.stderr.close()
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{argv[0]} was stopped")
    text = errors.decode("utf-8", "replace")
    log.debug("finished", argv=list(argv)[:1], returncode=proc.returncode, stderr=text[-2000:])
    return Finished(tuple(argv), proc.returncode, text, expired.is_set())


def capture(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> tuple[Finished, str]:
    """Run `argv` to completion; returns how it ended and its stdout as text."""
    out = bytearray()
    finished = stream(argv, out.extend, env=env, pass_fds=pass_fds)
    return finished, out.decode("utf-8", "replace")
