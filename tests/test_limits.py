"""max_parallel's gate, max_connections' slots and the daemon's status file."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.limits import Gate, connection_slots, read_status, write_status
from backupagent.logging import read_events
from backupagent.workers import Cancelled

from .conftest import WriteConfig


def test_the_gate_lets_limit_in_and_the_rest_wait_in_order() -> None:
    gate = Gate(2)
    never = threading.Event()
    assert gate.enter("a", never) and gate.enter("b", never)
    order: list[str] = []

    def wait(name: str) -> None:
        if gate.enter(name, never):
            order.append(name)

    c = threading.Thread(target=wait, args=("c",))
    c.start()
    _until(lambda: gate.queued == ["c"])
    d = threading.Thread(target=wait, args=("d",))
    d.start()
    _until(lambda: gate.queued == ["c", "d"])
    assert gate.running == ["a", "b"]
    gate.leave("a")
    c.join(10)
    assert order == ["c"] and gate.queued == ["d"]  # first come, first in
    gate.leave("b")
    d.join(10)
    assert order == ["c", "d"] and gate.running == ["c", "d"]


def test_a_cancel_empties_the_queue() -> None:
    gate, cancel = Gate(1), threading.Event()
    assert gate.enter("a", cancel)
    results: list[bool] = []
    waiting = threading.Thread(target=lambda: results.append(gate.enter("b", cancel)))
    waiting.start()
    _until(lambda: gate.queued == ["b"])
    cancel.set()
    gate.wake()
    waiting.join(10)
    assert results == [False] and gate.queued == [] and gate.running == ["a"]


def test_a_connection_slot_is_held_until_released(tmp_path: Path) -> None:
    taken, release, second = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with connection_slots(tmp_path, {"offsite": 1}):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=first)
    holder.start()
    assert taken.wait(10)
    cancel = threading.Event()
    cancel.set()
    with (  # the only slot is taken: it would wait
        pytest.raises(Cancelled),
        connection_slots(tmp_path, {"offsite": 1}, cancel),
    ):
        pass
    with connection_slots(tmp_path, {"offsite": 2, "other": None}):  # a second slot
        second.set()
    release.set()
    holder.join(10)
    with connection_slots(tmp_path, {"offsite": 1}, cancel):  # free again
        pass
    assert second.is_set()


def test_a_slot_whose_holder_died_is_free(tmp_path: Path) -> None:
    script = (
        "import os, sys; from pathlib import Path\n"
        "from backupagent.limits import connection_slots\n"
        "with connection_slots(Path(sys.argv[1]), {'offsite': 1}):\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert done.returncode == -9
    cancel = threading.Event()
    cancel.set()
    with connection_slots(tmp_path, {"offsite": 1}, cancel):  # the kernel freed it
        pass


def test_the_status_is_read_only_from_a_live_daemon(tmp_path: Path) -> None:
    write_status(tmp_path, ["a"], ["b", "c (verify)"])
    status = read_status(tmp_path)
    assert status is not None and status.pid == os.getpid()
    assert (status.running, status.queued) == (["a"], ["b", "c (verify)"])
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    text = (tmp_path / "daemon.json").read_text()
    (tmp_path / "daemon.json").write_text(text.replace(str(os.getpid()), gone.stdout.strip(), 1))
    assert read_status(tmp_path) is None  # that process is gone
    (tmp_path / "daemon.json").write_text("{not json")
    assert read_status(tmp_path) is None


def test_jobs_that_start_together_write_the_status_without_a_clash(tmp_path: Path) -> None:
    """Eight threads writing at once (as jobs due at one second do): every write
    succeeds, the file is whole, no temporary file is left."""
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(100):
                write_status(tmp_path, [f"job{n}"], [str(i)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    status = read_status(tmp_path)
    assert status is not None and status.queued == ["99"]
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]


def test_max_connections_1_serialises_two_runs(write_config: WriteConfig, tmp_path: Path) -> None:
    """The first run holds the slot while its (test) dump waits; the second run waits
    for the slot, and its whole FTP dialogue comes after the first one's."""
    config = write_config(dest="max_connections = 1")
    in_dump, release = threading.Event(), threading.Event()

    def blocking_dump(site: object, work: Path, stop: threading.Event) -> list:
        in_dump.set()
        release.wait(60)
        return []

    results = []
    first = threading.Thread(
        target=lambda: results.append(run_job(config, "www", dumper=blocking_dump))
    )
    first.start()
    assert in_dump.wait(30)
    second_config = config.model_copy(update={"jobs": {"www2": config.jobs["www"]}}, deep=True)
    second = threading.Thread(target=lambda: results.append(run_job(second_config, "www2")))
    second.start()
    log_dir = config.agent.log_dir / "www2"
    _until(lambda: _waiting(log_dir))
    release.set()
    first.join(60)
    second.join(60)
    assert [r.outcome for r in results] == ["success", "success"], [r.error for r in results]
    one, two = (_ftp_span(r.log_path) for r in results)
    assert one[1] < two[0], (one, two)


def _waiting(log_dir: Path) -> bool:
    return any(
        e["event"] == "waiting: the destination's connections are all in use"
        for path in log_dir.glob("*.jsonl")
        for e in read_events(path)
    )


def _ftp_span(log: Path) -> tuple[dt.datetime, dt.datetime]:
    stamps = [
        dt.datetime.fromisoformat(e["timestamp"])
        for e in read_events(log)
        if str(e["event"]).startswith("FTP ")
    ]
    return min(stamps), max(stamps)


def _until(check, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    """Poll an observable condition, bounded."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
