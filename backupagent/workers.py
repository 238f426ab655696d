"""Threads the way a run needs them: the run's log context carried into the thread,
its exception re-raised in the thread that waits for it, and one way to stop.

`Cancelled` is the one "asked to stop" exception (a signal, a stopped pipeline, a
killed child); `on_cancel` breaks off blocking I/O when the run is cancelled.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

POLL = 0.2  # seconds between looks at a cancel event


class Cancelled(Exception):
    """The work was asked to stop (SIGTERM/SIGINT, or a step that failed elsewhere);
    whoever catches it cleans up and records the run as aborted."""


class Worker(Generic[T]):
    """`target(*args)` on a daemon thread, with the starting thread's contextvars
    (structlog's bound fields: job, run_id). `join` waits and re-raises what it raised.

    `then` runs on the thread once the target's outcome is recorded: closing a pipe
    there means whoever sees its end also sees `error`.
    """

    def __init__(
        self,
        name: str,
        target: Callable[..., T],
        *args: Any,
        then: Callable[[], object] | None = None,
    ) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None
        self._then = then
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run, target, *args), name=name, daemon=True
        )

    def _run(self, target: Callable[..., T], *args: Any) -> None:
        try:
            self.value = target(*args)
        except BaseException as exc:  # re-raised by check()/join() in the waiting thread
            self.error = exc
        finally:
            if self._then is not None:
                self._then()

    def start(self) -> Worker[T]:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> None:
        """Raise the worker's exception, if it has failed already."""
        if self.error is not None:
            raise self.error

    def join(self, while_waiting: Callable[[], None] | None = None) -> T:
        """Wait for the result; `while_waiting` is called every POLL seconds (to abort)."""
        while self._thread.is_alive():
            self._thread.join(POLL if while_waiting else None)
            if while_waiting:
                while_waiting()
        self.check()
        return self.value  # type: ignore[return-value]

    def wait(self) -> None:
        """Wait for the thread to end, whatever it did (its error stays in `error`)."""
        self._thread.join()


@contextlib.contextmanager
def on_cancel(cancel: threading.Event | None, action: Callable[[], None]) -> Iterator[None]:
    """While inside, `action` is called once as soon as `cancel` is set (from a watcher
    thread): it breaks off blocking I/O such as a socket read or a child process."""
    if cancel is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL):
            if cancel.is_set():
                action()
                return

    watcher = threading.Thread(target=watch, name="cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def raise_if_cancelled(cancel: threading.Event | None, what: str = "the run was stopped") -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(what)
