"""The bookkeeping every recorded run shares, backup and verify alike: the job's lock,
a run id, the run's log, its history row (never left `running`), notifications and
the pruning of old logs. What the run does happens inside `recorded_run`."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator

import structlog

from backupagent import notify, trust
from backupagent.config import Config
from backupagent.logging import prune_run_logs, run_log
from backupagent.outcome import BACKUP_TRIGGERS, Outcome, RunResult, Trigger
from backupagent.state import History, Run, job_lock


def new_run_id(now: dt.datetime) -> str:
    """`YYYYmmddTHHMMSS.mmmZ-xxxxxx`: sorts by start time, unique across quick reruns."""
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


@contextlib.contextmanager
def recorded_run(
    config: Config, job: str, trigger: Trigger
) -> Iterator[tuple[RunResult, dt.datetime]]:
    """Yield the run's result to fill in, and its start; record it whatever happens.

    Raises state.JobLocked if the job is running already, SetupError if the agent's
    directories cannot be made. An exception from inside is a bug: it is logged with
    its traceback and the run recorded as failed. Backup runs ping at the start; every
    run is notified at the end (verify runs do not ping: a verify is not a backup).
    """
    _prepare_directories(config, job)
    with job_lock(config.agent.state_dir, job):
        started = dt.datetime.now(dt.UTC)
        run_id = new_run_id(started)
        with run_log(config.agent.log_dir, job, run_id) as log_path:
            if trigger in BACKUP_TRIGGERS:
                notify.ping(config.jobs[job].ping, "start")
            result = RunResult(job, run_id, log_path, trigger, started=started)
            record = Run(run_id, job, trigger, started, str(log_path))
            _record(config, record, interrupted=True)
            clock = time.monotonic()
            try:
                yield result, started
            except Exception as exc:  # the run records every failure it knows: a bug
                structlog.get_logger("backupagent.run").exception("internal error")
                result.outcome = Outcome.FAILED
                result.error = f"internal error: {type(exc).__name__}: {exc}"
            finally:  # whatever happened, the history never keeps this run as `running`
                result.seconds = time.monotonic() - clock
                _record(config, _finished(record, result))
        # after the log is closed: the suggestion stays its last event
        notify.after_run(config, job, result)
        prune_run_logs(config.agent.log_dir, job, config.agent.keep_logs)


def _finished(record: Run, result: RunResult) -> Run:
    stats = result.stats
    record.result = result.outcome
    record.finished = result.finished = dt.datetime.now(dt.UTC)
    record.bytes_archived = stats.bytes_read if stats else None
    record.bytes_uploaded = stats.archive_bytes if stats and result.backup_id else None
    record.archive = result.archive
    record.error = result.error
    record.suggestion = result.suggestion
    record.warnings = len(result.warnings)
    record.manifest_sha256 = result.manifest_sha256
    if len(result.destinations) > 1:
        record.destinations = json.dumps([d.view() for d in result.destinations])
    return record


def _record(config: Config, run: Run, interrupted: bool = False) -> None:
    """Write the run to the history; a history problem never fails a backup."""
    try:
        with History(config.agent.state_dir) as history:
            if interrupted:
                history.interrupted(run.job)  # we hold the lock: such rows are stale
            history.save(run)
    except sqlite3.Error as exc:
        structlog.get_logger("backupagent.run").warning(
            "could not record the run in the history", error=str(exc)
        )


class SetupError(Exception):
    """The agent's own directories cannot be used; names the [agent] key to fix."""


def _prepare_directories(config: Config, job_name: str) -> None:
    """The job's directories, made private and checked to be (trust.private_directory):
    a local user who made `/var/tmp/backupagent/JOB` first must not get the run's
    dumps, nor plant links for root to write through."""
    for key, path in (
        ("state_dir", config.agent.state_dir / "locks"),
        ("log_dir", config.agent.log_dir / job_name),
        ("spool_dir", config.agent.spool_dir / job_name),
    ):
        try:
            trust.private_directory(path)
        except trust.Untrusted as exc:
            raise SetupError(f"{exc} ([agent] {key} in {config.path})") from None
        except OSError as exc:
            raise SetupError(
                f"cannot create {path}: {exc.strerror or exc} "
                f"(set [agent] {key} in {config.path} to a directory this user may write)"
            ) from None
