"""`backupagent daemon`: every job on its cron schedule until SIGTERM.

APScheduler 3 runs each job in a worker thread (one instance per job, misfires
coalesced), so a long job never delays another's start. At start-up, a job whose
scheduled time passed since its last successful run (per the run history, not memory)
runs once (catch-up). SIGHUP reloads jobs.toml; SIGTERM/SIGINT stop new runs, abort
running ones cleanly, and exit within `[agent] stop_timeout` seconds plus the FTP
`timeout` of an operation under way. With NOTIFY_SOCKET set it speaks sd_notify.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import select
import signal
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from backupagent.actions.backup import run_job
from backupagent.config import Config, ConfigError, cron_trigger, job_trigger, load_config
from backupagent.limits import Gate, clear_status, write_status
from backupagent.outcome import BACKUP_TRIGGERS, OK, Trigger
from backupagent.state import History, JobLocked

MAX_WORKERS = 64


def missed_run(
    trigger: BaseTrigger, since: dt.datetime | None, now: dt.datetime
) -> dt.datetime | None:
    """The first scheduled time after `since` that is already past, if any.

    `since` is the start of the last successful run (or, for a job that never
    succeeded, of its first recorded run); None means the job never ran here, and
    nothing counts as missed.
    """
    if since is None:
        return None
    due = trigger.get_next_fire_time(None, since + dt.timedelta(seconds=1))
    return due if due is not None and due <= now else None


def catch_up_reference(history: History, job: str) -> dt.datetime | None:
    """When the job last succeeded, else when it first ran at all (None: never ran)."""
    success = history.last(job, tuple(OK), BACKUP_TRIGGERS)
    if success is not None:
        return success.started
    return history.first_started(job)


class Notifier:
    """sd_notify over the datagram socket systemd names in NOTIFY_SOCKET (no-op without it)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2_000_000 if enabled else None

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                # never block: a listener that stops reading must not stall the daemon
                sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self.address)
            except OSError as exc:
                structlog.get_logger("backupagent.daemon").warning(
                    "sd_notify failed", error=str(exc)
                )


class Wakeup:
    """What the daemon's main loop sleeps on: signals and nudges from worker threads.

    Signals arrive through `signal.set_wakeup_fd`, written by the interpreter's C
    handler. Setting a threading.Event from a Python signal handler instead can
    deadlock: the signal may land while the main thread holds that Event's lock.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def nudge(self) -> None:
        """From any thread: end the current wait."""
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop anyway
            os.write(self.write_fd, b"\0")

    def wait(self, timeout: float) -> set[int]:
        """Sleep up to `timeout` seconds or until woken; the signals that arrived."""
        select.select([self.read_fd], [], [], timeout)
        try:
            data = os.read(self.read_fd, 4096)
        except BlockingIOError:
            data = b""
        return set(data) - {0}

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class Daemon:
    """The scheduler loop, its signal handling and the jobs it is running."""

    def __init__(self, config_path: Path, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)  # ConfigError propagates: exit 2 at start
        self.notifier = notifier or Notifier()
        self.log = structlog.get_logger("backupagent.daemon")
        self.cancel = threading.Event()  # set on SIGTERM: running jobs abort
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wakeup = Wakeup()
        self.running: set[str] = set()
        self.running_changed = threading.Condition()
        self.gate = Gate(self.config.agent.max_parallel, self._publish_status)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(MAX_WORKERS)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        )

    # --- planning -------------------------------------------------------------------

    def plan(self, config: Config) -> None:
        """(Re)create one cron trigger per scheduled job; running jobs are not touched."""
        for skipped in config.skipped:
            self.log.warning("a discovered site is skipped", problem=str(skipped))
        for aps_job in self.scheduler.get_jobs():
            if aps_job.id.startswith("cron:"):
                aps_job.remove()
        for name, job in config.jobs.items():
            if job.schedule is not None:
                trigger = job_trigger(name, job.schedule, job.jitter, config.agent.timezone)
                self.scheduler.add_job(
                    self._run, trigger, args=(name, Trigger.SCHEDULE), id=f"cron:{name}", name=name
                )
            for kind, when in (("verify", job.verify_schedule), ("drill", job.drill_schedule)):
                if when is not None:
                    self.scheduler.add_job(
                        self._check,
                        cron_trigger(when, config.agent.timezone),
                        args=(name, kind),
                        id=f"cron:{kind}:{name}",
                        name=f"{name} ({kind})",
                    )
        self.config = config
        self.gate.limit = config.agent.max_parallel
        self.gate.wake()  # a higher limit lets waiting runs start
        self.log.info("jobs planned", jobs=self._next_runs())

    def catch_up(self) -> None:
        """Run once, now, each job whose scheduled time passed since it last succeeded."""
        now = dt.datetime.now(dt.UTC)
        with History(self.config.agent.state_dir) as history:
            for name, job in self.config.jobs.items():
                if job.schedule is None or not job.catch_up:
                    continue
                timezone = self.config.agent.timezone
                trigger = job_trigger(name, job.schedule, job.jitter, timezone)
                due = missed_run(trigger, catch_up_reference(history, name), now)
                if due is not None:
                    self.log.info("catching up a missed run", job=name, was_due=due.isoformat())
                    self.scheduler.add_job(
                        self._run, args=(name, Trigger.CATCH_UP), id=f"catch-up:{name}", name=name
                    )

    def _next_runs(self) -> dict[str, str]:
        return {
            j.name: j.next_run_time.isoformat() if j.next_run_time else "paused"
            for j in self.scheduler.get_jobs()
        }

    # --- running --------------------------------------------------------------------

    def _run(self, name: str, trigger: str) -> None:
        """One scheduled run, in a worker thread."""
        if self.cancel.is_set():
            return
        with self.running_changed:
            self.running.add(name)
        self.wakeup.nudge()  # refresh STATUS
        try:
            if not self.gate.enter(name, self.cancel):
                return
            try:
                config = self.config  # as it is when the run starts; a reload leaves it
                result = run_job(config, name, trigger=trigger, cancel=self.cancel)
                self.log.info("run ended", job=name, result=result.outcome, run_id=result.run_id)
            except JobLocked as exc:
                self.log.warning("run skipped", job=name, reason=str(exc))
            except Exception:  # never let one job's bug stop the daemon
                self.log.exception("run crashed", job=name)
            finally:
                self.gate.leave(name)
        finally:
            with self.running_changed:
                self.running.discard(name)
                self.running_changed.notify_all()
            self.wakeup.nudge()

    def _check(self, name: str, kind: str) -> None:
        """A scheduled check of the newest backup, in a worker thread: a verify on each
        destination, or a restore drill from the first."""
        from backupagent.actions.drill import drill
        from backupagent.actions.verify import verify

        label = f"{name} ({kind})"
        if self.cancel.is_set() or not self.gate.enter(label, self.cancel):
            return
        try:
            destinations = self.config.jobs[name].destination_names
            for destination in destinations if kind == "verify" else destinations[:1]:
                if kind == "verify":
                    sample = self.config.jobs[name].verify_sample
                    ok, message, _ = verify(
                        self.config,
                        name,
                        cancel=self.cancel,
                        destination=destination,
                        sample=sample,
                    )
                else:
                    drilled = drill(self.config, name, self.cancel, destination=destination)
                    ok, message = drilled.ok, drilled.message
                (self.log.info if ok else self.log.error)(
                    f"{kind} ended", job=name, destination=destination, detail=message
                )
        except JobLocked as exc:  # the backup runs now: the next check will see it
            self.log.warning(f"{kind} skipped", job=name, reason=str(exc))
        except Exception:
            self.log.exception(f"{kind} crashed", job=name)
        finally:
            self.gate.leave(label)

    def _publish_status(self) -> None:
        """daemon.json: who runs and who waits, for `backupagent list`."""
        try:
            write_status(self.config.agent.state_dir, self.gate.running, self.gate.queued)
        except OSError as exc:
            self.log.warning("could not write the daemon's status", error=str(exc))

    # --- the main loop ----------------------------------------------------------------

    def _signalled(self, signums: set[int]) -> None:
        """SIGHUP asks for a reload; SIGTERM and SIGINT for a stop."""
        if signal.SIGHUP in signums:
            self.reload_requested.set()
        if signums & {signal.SIGTERM, signal.SIGINT}:
            self.stop_requested.set()

    def reload(self) -> None:
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                self.log.error("reload refused: invalid jobs.toml", problem=str(problem))
            self.log.warning("keeping the jobs as they were")
            return
        self.plan(config)
        self.log.info("jobs.toml reloaded")

    def status(self) -> str:
        upcoming = sorted(
            (j.next_run_time, j.name) for j in self.scheduler.get_jobs() if j.next_run_time
        )
        nxt = f"next: {upcoming[0][1]} at {upcoming[0][0]:%Y-%m-%d %H:%M:%S %Z}" if upcoming else ""
        busy = ", ".join(self.gate.running) or "none"
        waiting = f"; queued: {', '.join(self.gate.queued)}" if self.gate.queued else ""
        return f"{nxt}; running: {busy}{waiting}".lstrip("; ")

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _reported_by_wakeup_fd)
        signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)
        self.scheduler.start()
        self._publish_status()  # `list` knows a daemon runs, and that nothing waits yet
        self.plan(self.config)
        self.catch_up()
        self.notifier.send("READY=1", f"STATUS={self.status()}")
        self.log.info("daemon started", config=str(self.config_path), pid=os.getpid())
        interval = self.notifier.watchdog_interval
        shown = ""
        while not self.stop_requested.is_set():
            self._signalled(self.wakeup.wait(interval if interval else 60))
            if self.stop_requested.is_set():
                break
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.notifier.send("RELOADING=1")
                self.reload()
                self.notifier.send("READY=1")
            if interval:
                self.notifier.send("WATCHDOG=1")
            if (status := self.status()) != shown:
                self.notifier.send(f"STATUS={status}")
                shown = status
        return self.shutdown()

    def shutdown(self) -> int:
        """No new runs; running ones abort and clean up within stop_timeout."""
        self.notifier.send("STOPPING=1", "STATUS=stopping: aborting running jobs")
        self.log.info("stopping", running=sorted(self.running))
        self.scheduler.pause()
        self.cancel.set()
        self.gate.wake()  # queued runs give up
        with self.running_changed:
            done = self.running_changed.wait_for(
                lambda: not self.running, timeout=self.config.agent.stop_timeout
            )
        self.scheduler.shutdown(wait=False)
        clear_status(self.config.agent.state_dir)
        if not done:
            self.log.error("jobs still running at exit", jobs=sorted(self.running))
            return 1
        self.log.info("daemon stopped")
        return 0


def _reported_by_wakeup_fd(_signum: int, _frame: FrameType | None) -> None:
    """Nothing to do here: the signal number already went down the wakeup pipe."""
