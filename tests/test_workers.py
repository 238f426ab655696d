"""workers.py: the one way to run a thread and to stop one."""

from __future__ import annotations

import threading

import pytest
import structlog

from backupagent.workers import Cancelled, Worker, on_cancel, raise_if_cancelled


def test_a_worker_carries_the_log_context_and_returns_its_value() -> None:
    structlog.contextvars.bind_contextvars(job="www", run_id="r1")
    try:
        worker = Worker("t", lambda: dict(structlog.contextvars.get_contextvars())).start()
        assert worker.join() == {"job": "www", "run_id": "r1"}
    finally:
        structlog.contextvars.clear_contextvars()


def test_a_workers_exception_is_raised_where_it_is_waited_for() -> None:
    def fail() -> None:
        raise ValueError("dump failed")

    worker = Worker("t", fail).start()
    with pytest.raises(ValueError, match="dump failed"):
        worker.join()
    worker.wait()  # waiting again, without raising, is fine
    assert isinstance(worker.error, ValueError)


def test_then_runs_after_the_error_is_recorded() -> None:
    """Whoever sees `then`'s effect (a closed pipe) must also see the error."""
    seen: list[BaseException | None] = []
    worker: Worker[None]

    def fail() -> None:
        raise OSError("broken")

    worker = Worker("t", fail, then=lambda: seen.append(worker.error))
    worker.start().wait()
    assert isinstance(seen[0], OSError)


def test_join_calls_while_waiting_which_may_abort() -> None:
    release = threading.Event()
    calls: list[int] = []

    def stop_after_two() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled("stopped")

    worker = Worker("t", release.wait).start()
    with pytest.raises(Cancelled):
        worker.join(stop_after_two)
    release.set()
    worker.wait()
    assert len(calls) == 2


def test_on_cancel_acts_once_when_set_and_never_otherwise() -> None:
    cancel = threading.Event()
    acted = threading.Event()
    count: list[int] = []

    def act() -> None:
        count.append(1)
        acted.set()

    with on_cancel(cancel, act):
        pass
    assert count == []
    with on_cancel(cancel, act):
        cancel.set()
        assert acted.wait(5)
    assert count == [1]
    with on_cancel(None, act):  # no event: nothing to watch
        pass
    with pytest.raises(Cancelled, match="stopped"):
        raise_if_cancelled(cancel, "stopped")
    raise_if_cancelled(threading.Event())
