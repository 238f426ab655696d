"""Knowing without looking: e-mail, webhook pings and a Prometheus textfile.

Every function here is best effort: a mail server or ping endpoint that fails is a
logged warning and never changes a run's result. Timeouts bound every attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

if TYPE_CHECKING:
    from email.message import EmailMessage

from backupagent import readback
from backupagent.config import Config, EmailSettings, PingSettings
from backupagent.logging import read_events
from backupagent.outcome import BACKUP_TRIGGERS, OK, Outcome, RunResult
from backupagent.state import History, Run
from backupagent.text import printable
from backupagent.views import FORMAT, summary

Event = Literal["start", "success", "failure"]
RESULTS = tuple(o for o in Outcome if o is not Outcome.RUNNING)
LOG_TAIL = 40  # events of the debug log quoted in a mail


def ping(settings: PingSettings | None, event: Event, body: dict[str, Any] | None = None) -> None:
    """GET (or POST the summary to) the URL for `event`, with bounded retries."""
    if settings is None:
        return
    url = settings.url_for(event)
    if url is None:
        return
    import urllib.error  # here, not at the top: most runs ping nothing
    import urllib.request

    log = structlog.get_logger("backupagent.notify")
    data = json.dumps(body).encode() if settings.post_summary and body is not None else None
    for attempt in range(settings.retries + 1):
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        if data:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=settings.timeout) as response:
                log.debug("ping sent", ping_event=event, url=url, status=response.status)
                return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if attempt == settings.retries:
                log.warning("ping failed", ping_event=event, url=url, reason=str(reason))
                return
            time.sleep(min(2**attempt, 10))


def mail_settings(config: Config, job: str) -> EmailSettings | None:
    return config.jobs[job].email or config.agent.email


def wants_mail(settings: EmailSettings | None, outcome: str) -> bool:
    """Aborted and failed runs count as failures."""
    kind = {"success": "success", "warning": "warning"}.get(outcome, "failure")
    return settings is not None and kind in settings.on


def compose(settings: EmailSettings, job: str, result: RunResult) -> EmailMessage:
    """Subject `[backupagent] FAILED nightly on HOST`; suggestion first, then summary, log tail."""
    from email.message import EmailMessage

    host = socket.gethostname()
    word = {"success": "OK", "warning": "WARNING", "aborted": "ABORTED"}.get(
        result.outcome, "FAILED"
    )
    facts = summary(result)
    lines: list[str] = []
    if result.suggestion:
        lines += ["What to do:", result.suggestion, ""]
    lines += [f"Job {job} on {host}: {word}"]
    if result.error:
        lines.append(f"Error: {result.error}")
    for key in ("run_id", "trigger", "backup_id", "seconds", "bytes_archived", "bytes_uploaded"):
        lines.append(f"{key}: {facts[key]}")
    if len(result.destinations) > 1:
        lines += ["", "Destinations:"]
        lines += [
            f"  {d.name}: {d.outcome}" + (f" — {d.error}" if d.error else "")
            for d in result.destinations
        ]
    if result.warnings:
        lines += ["", f"Warnings ({len(result.warnings)}):", *[f"  {w}" for w in result.warnings]]
    lines += ["", f"Last {LOG_TAIL} events of the debug log ({result.log_path}):"]
    lines += _log_tail(Path(result.log_path))
    message = EmailMessage()
    what = f"{result.trigger} of {job}" if result.trigger not in BACKUP_TRIGGERS else job
    message["Subject"] = f"[backupagent] {word} {what} on {host}"
    message["From"] = settings.sender or f"backupagent@{host}"
    message["To"] = ", ".join(settings.to)
    message.set_content(printable("\n".join(lines)) + "\n")
    return message


def _log_tail(path: Path) -> list[str]:
    try:
        events = read_events(path)[-LOG_TAIL:]
    except OSError:
        return ["  (the log could not be read)"]
    shown = []
    for event in events:
        extras = {
            k: v
            for k, v in event.items()
            if k not in ("event", "timestamp", "level", "job", "run_id", "text")
        }
        text = f"  {str(event.get('timestamp', ''))[11:19]} {event.get('level', '')}: "
        shown.append(text + str(event.get("event")) + (f" {extras}" if extras else ""))
    return shown


def send_mail(settings: EmailSettings, message: EmailMessage) -> None:
    """Deliver over SMTP (STARTTLS, implicit TLS or plain); failures are logged only."""
    import smtplib

    log = structlog.get_logger("backupagent.notify")
    try:
        cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
        context = ssl.create_default_context(cafile=cafile)
        if settings.smtp_tls == "implicit":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.smtp_host, settings.port, timeout=settings.timeout, context=context
            )
        else:
            client = smtplib.SMTP(settings.smtp_host, settings.port, timeout=settings.timeout)
        with client:
            if settings.smtp_tls == "starttls":
                client.starttls(context=context)
            if settings.smtp_user:
                client.login(settings.smtp_user, settings.read_password() or "")
            client.send_message(message)
        log.info("mail sent", to=settings.to, subject=message["Subject"])
    except (smtplib.SMTPException, OSError) as exc:
        log.warning("mail could not be sent", to=settings.to, reason=str(exc))


def after_run(config: Config, job: str, result: RunResult) -> None:
    """Pings, mail and metrics once a run has ended."""
    body = {"format": FORMAT, **summary(result)}  # as `run-job --json` prints it
    ok = result.outcome in OK
    if result.trigger in BACKUP_TRIGGERS:  # a verify says nothing about tonight's backup
        ping(config.jobs[job].ping, "success" if ok else "failure", body)
    settings = mail_settings(config, job)
    if settings is not None and wants_mail(settings, result.outcome):
        send_mail(settings, compose(settings, job, result))
    write_metrics(config)


def metrics_text(
    latest: dict[str, dict[str, Run | None]],
    skipped: int = 0,
    read_back: dict[str, float] | None = None,
) -> str:
    """The Prometheus exposition text for every job's latest runs, the number of
    sites [discover] skipped, and when each job's backup was last read back in full
    (readback.py) (pure)."""
    families = [
        (
            "backupagent_last_success_timestamp_seconds",
            "Start of the last successful backup run; 0 for a job that never had one.",
        ),
        ("backupagent_last_run_timestamp_seconds", "Start of the last backup run."),
        ("backupagent_last_run_result", "1 for the last run's result, 0 for the others."),
        ("backupagent_last_run_duration_seconds", "Duration of the last backup run."),
        ("backupagent_last_run_archived_bytes", "Bytes read from sources and dumps."),
        ("backupagent_last_run_uploaded_bytes", "Size of the uploaded archive."),
        ("backupagent_last_run_warnings", "Warnings of the last backup run."),
        (
            "backupagent_last_run_destination_result",
            "1 for each destination's last result, 0 for the others (jobs with several).",
        ),
        (
            "backupagent_last_verify_success_timestamp_seconds",
            "Start of the last verify that found the newest backup whole.",
        ),
        (
            "backupagent_last_drill_success_timestamp_seconds",
            "Start of the last restore drill that restored the newest backup and loaded "
            "its dumps (with the rows counted at dump time, where it recorded them).",
        ),
        (
            "backupagent_discover_skipped_sites",
            "Sites [discover] found and skipped (a name that clashes or no job may hold).",
        ),
        (
            "backupagent_last_full_readback_timestamp_seconds",
            "When every volume of one backup was last read back and matched its manifest "
            "(a full verify, or the last of a rotation of sampled ones).",
        ),
    ]
    samples: dict[str, list[str]] = {name: [] for name, _ in families}
    for job in sorted(latest):
        label = f'job="{_escape(job)}"'
        last, success, verified = (latest[job][k] for k in ("last", "success", "verified"))
        # never succeeded: 0, so that "time() - this > a day" alerts on it too
        when = 0.0 if success is None else success.started.timestamp()
        samples[families[0][0]].append(f"{{{label}}} {when:.3f}")
        if verified is not None:
            samples[families[8][0]].append(f"{{{label}}} {verified.started.timestamp():.3f}")
        if (drilled := latest[job]["drilled"]) is not None:
            samples[families[9][0]].append(f"{{{label}}} {drilled.started.timestamp():.3f}")
        if last is None:
            continue
        samples[families[1][0]].append(f"{{{label}}} {last.started.timestamp():.3f}")
        for result in RESULTS:
            flag = 1 if last.result == result else 0
            samples[families[2][0]].append(f'{{{label},result="{result}"}} {flag}')
        if last.seconds is not None:
            samples[families[3][0]].append(f"{{{label}}} {last.seconds:.3f}")
        for family, amount in (
            (4, last.bytes_archived),
            (5, last.bytes_uploaded),
            (6, last.warnings),
        ):
            if amount is not None:
                samples[families[family][0]].append(f"{{{label}}} {amount}")
        for entry in last.destination_results:
            where = f'{label},destination="{_escape(str(entry["name"]))}"'
            for result in RESULTS:
                flag = 1 if entry["result"] == result else 0
                samples[families[7][0]].append(f'{{{where},result="{result}"}} {flag}')
    samples[families[10][0]].append(f" {skipped}")
    for job, when in sorted((read_back or {}).items()):
        samples[families[11][0]].append(f'{{job="{_escape(job)}"}} {when:.3f}')
    lines = []
    for name, help_text in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{sample}" for sample in samples[name]]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_metrics(config: Config) -> None:
    """Rewrite the textfile atomically (temp file + rename) from the run history."""
    target = config.agent.metrics_file
    if target is None:
        return
    temp = None
    try:
        with History(config.agent.state_dir) as history:
            recorded = history.latest_per_job(also=config.jobs)
        # a job removed from jobs.toml keeps its history, not its metrics: its age alert
        # would fire for ever
        latest = {job: runs for job, runs in recorded.items() if job in config.jobs}
        read_back = {
            job: when
            for job in config.jobs
            if (when := readback.load(config.agent.state_dir, job).full_timestamp()) is not None
        }
        text = metrics_text(latest, len(config.skipped), read_back)
        target.parent.mkdir(parents=True, exist_ok=True)
        # not *.prom: node_exporter reads every *.prom in the directory, dotfiles too
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        temp = None
    except OSError as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        structlog.get_logger("backupagent.notify").warning(
            "metrics file not written", path=str(target), reason=str(exc)
        )
