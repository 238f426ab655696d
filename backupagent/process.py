"""The one place the agent runs other programs (dump tools, database clients).

Secrets never go on a command line: `secret_fd` hands them to a child through an
inherited pipe, which the child reads as a file (`/dev/fd/N`).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import threading
import time
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
    output_left_open: bool = False  # a process it started (outside its group) kept stdout


@dataclass(frozen=True)
class Identity:
    """Who a child runs as when the agent (as root) hands it input a tenant wrote: the
    user and group, with no supplementary groups."""

    uid: int
    gid: int

    @classmethod
    def owner_of(cls, info: os.stat_result) -> Identity | None:
        """The owner of a file or directory, when a root agent should become them to
        read what they wrote (None: this process's own user will do)."""
        if os.geteuid() != 0 or info.st_uid == 0:
            return None
        return cls(info.st_uid, info.st_gid)


# After a command with a timeout has ended, how long its output is still read: a
# daemon it started with setsid (outside the group the timeout kills) may hold the
# pipe open for ever.
OUTPUT_GRACE = 2.0


def find_tool(*names: str) -> str:
    """The first of `names` found on PATH (e.g. mariadb-dump, else mysqldump)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissing(names)


def secret_fd(content: str, reader: Identity | None = None) -> int:
    """A pipe's read end holding `content`; pass it in `pass_fds` and close it afterwards.
    A child started as `reader` may open it by name (`/dev/fd/N`): the pipe is theirs."""
    data = content.encode()
    if len(data) > 60_000:  # must fit the pipe buffer, or writing would block
        raise ValueError("secret too large for a pipe")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        if reader is not None:
            os.fchown(read_end, reader.uid, reader.gid)
    except BaseException:
        os.close(read_end)
        raise
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
    run_as: Identity | None = None,
) -> Finished:
    """Run `argv`, handing its stdout to `sink` chunk by chunk; keep the tail of stderr.

    The command line is logged (it never holds a secret); stderr is read on a thread
    so a chatty tool cannot block on a full pipe (with `merge_stderr` it goes to `sink`
    too). Setting `cancel` kills the child and raises Cancelled. With `timeout` the
    child runs in a process group of its own, all of it killed when the time is up
    (`timed_out`): a shell's children do not outlive it, and its output is read for at
    most OUTPUT_GRACE seconds after it ended (`output_left_open`). With `run_as` the
    child runs as that user (root handing it what a tenant wrote).
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
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
        cwd="/" if run_as else None,
    )
    assert proc.stdout is not None
    errors = bytearray()

    def drain() -> None:
        assert proc.stderr is not None
        while data := proc.stderr.read(4096):
            errors.extend(data)
            del errors[:-STDERR_KEEP]

    reader = Worker("stderr", drain).start() if proc.stderr is not None else None
    left_open = False
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
            if timeout is None:
                while data := proc.stdout.read(chunk):
                    sink(data)
            else:
                left_open = not _read_until_ended(proc, sink, chunk)
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
    return Finished(tuple(argv), proc.returncode, text, expired.is_set(), left_open)


def _read_until_ended(
    proc: subprocess.Popen[bytes], sink: Callable[[bytes], None], chunk: int
) -> bool:
    """Hand `proc`'s stdout to `sink` until EOF (True) or until OUTPUT_GRACE seconds
    after `proc` itself ended (False: something it started still holds the pipe)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ended_at: float | None = None
    while True:
        if poller.poll(100):
            data = os.read(fd, chunk)
            if not data:
                return True
            sink(data)
        if proc.poll() is not None:
            ended_at = time.monotonic() if ended_at is None else ended_at
            if time.monotonic() - ended_at > OUTPUT_GRACE:
                return False


def capture(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    run_as: Identity | None = None,
) -> tuple[Finished, str]:
    """Run `argv` to completion; returns how it ended and its stdout as text."""
    out = bytearray()
    finished = stream(argv, out.extend, env=env, pass_fds=pass_fds, run_as=run_as)
    return finished, out.decode("utf-8", "replace")


ANSWER_LIMIT = 16 << 20  # bytes of one answer read from a Session; longer ones are cut


class Session:
    """A client kept open and asked one line at a time: psql holding the transaction
    whose snapshot pg_dump reads, so that rows are counted in that same snapshot.
    Use it as a context manager; leaving ends the client (and its transaction)."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        structlog.get_logger("backupagent.process").debug("session", argv=list(argv))
        self.argv = tuple(argv)
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.errors = bytearray()
        self._reader = Worker("session stderr", self._drain).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        while data := self.proc.stderr.read(4096):
            self.errors.extend(data)
            del self.errors[:-STDERR_KEEP]

    def ask(
        self, text: str, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> str | None:
        """Send `text`, return the line it answers (None if the client ended or did not
        answer within `timeout`: then it is killed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except OSError:
            return None
        timer = threading.Timer(timeout, self.proc.kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            with on_cancel(cancel, self.proc.kill):
                line = self.proc.stdout.readline(ANSWER_LIMIT)
        finally:
            if timer is not None:
                timer.cancel()
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{self.argv[0]} was stopped")
        return line.decode("utf-8", "replace").rstrip("\n") if line.endswith(b"\n") else None

    @property
    def stderr(self) -> str:
        return self.errors.decode("utf-8", "replace")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._reader.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
