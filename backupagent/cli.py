"""Command line: parse, call, print. The work happens in the modules it calls."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from click.shell_completion import CompletionItem

from backupagent import __version__
from backupagent.config import Config, ConfigError, Problem, default_config_path, load_config
from backupagent.logging import configure, read_events, run_logs
from backupagent.outcome import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE
from backupagent.recording import SetupError
from backupagent.state import JobLocked
from backupagent.summary import count, print_summary
from backupagent.summary import size as _size
from backupagent.text import printable

T = TypeVar("T")


class _Context:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path or default_config_path()

    def config(self, as_json: bool = False) -> Config:
        """The validated config; on any problem print them all (as `check --json` does,
        when asked) and exit 2."""
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            if as_json:
                _check_report(self.config_path, None, exc.problems, [])
            for problem in exc.problems:
                click.echo(problem, err=True)
            sys.exit(EXIT_USAGE)

    def job(self, name: str) -> Config:
        config = self.config()
        if name not in config.jobs:
            known = ", ".join(sorted(config.jobs)) or "none"
            click.echo(f"{self.config_path.name}: no [jobs.{name}] table (jobs: {known})", err=True)
            sys.exit(EXIT_USAGE)
        return config


_CONFIG_HELP = "jobs.toml to use [default: $BACKUPAGENT_CONFIG, else /etc/backupagent/jobs.toml]"

EXIT_CODES = f"""\b
Exit codes:
  {EXIT_OK}   the backup was published (warnings, such as a skipped file, still 0)
  {EXIT_FAILED}   the job failed: nothing new was published
  {EXIT_USAGE}   bad command line or invalid jobs.toml
  {EXIT_LOCKED}  skipped: the same job is already running
"""


def _complete_jobs(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Job names for shell completion, read from jobs.toml without validating it."""
    import tomllib

    path = next(
        (c.params["config_path"] for c in (ctx, ctx.parent) if c and c.params.get("config_path")),
        None,
    )
    try:
        jobs = tomllib.loads(Path(path or default_config_path()).read_text()).get("jobs", {})
    except (OSError, ValueError):
        return []
    return [CompletionItem(name) for name in sorted(jobs) if name.startswith(incomplete)]


job_argument = click.argument("job", shell_complete=_complete_jobs)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (schema: README, JSON output)."
)
backup_option = click.option(
    "--backup", "wanted", default="latest", show_default=True, help="Backup id."
)
identity_option = click.option(
    "--identity",
    type=click.Path(path_type=Path, dir_okay=False),
    help="age identity file, for an encrypted backup.",
)
destination_option = click.option(
    "--destination",
    "only",
    metavar="NAME",
    help="Which of the job's destinations (when it has several).",
)


class _Commands(click.Group):
    """Every command also takes -c/--config after its name (`backupagent check -c F`)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(
                click.Option(
                    ["-c", "--config", "config_path"],
                    type=click.Path(path_type=Path, dir_okay=False),
                    help=_CONFIG_HELP,
                )
            )
            cmd.callback = _taking_config(cmd.callback)
        super().add_command(cmd, name)


def _taking_config(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    def run(*args: Any, config_path: Path | None = None, **kwargs: Any) -> Any:
        if config_path is not None:  # given after the command: it wins
            context = click.get_current_context().find_object(_Context)
            assert context is not None  # made by the group, which runs first
            context.config_path = config_path
        return callback(*args, **kwargs) if callback else None

    return run


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES,
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help=_CONFIG_HELP,
)
@click.option("-v", "--verbose", is_flag=True, help="Show the FTP dialogue on stderr too.")
@click.version_option(__version__, prog_name="backupagent")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """Back up web hosts (files and databases) to FTP/FTPS, SFTP or a directory, and explain
    why a transfer failed."""
    configure(verbose=verbose)
    ctx.obj = _Context(config_path)


@cli.command()
@json_option
@click.pass_obj
def check(obj: _Context, as_json: bool) -> None:
    """Validate jobs.toml; print every problem with its table and key."""
    from backupagent.config import config_warnings
    from backupagent.preflight import host_problems

    config = obj.config(as_json)
    warnings = config_warnings(config)
    problems = host_problems(config)  # valid, but a run would fail on this host
    if as_json:
        _check_report(obj.config_path, config, problems, warnings)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        sys.exit(EXIT_USAGE)
    click.echo(
        f"{obj.config_path}: OK ({count(len(config.jobs), 'job')}, "
        f"{count(len(config.destinations), 'destination')})"
    )


def _check_report(
    path: Path, config: Config | None, problems: list[Problem], warnings: list[Problem]
) -> NoReturn:
    """`check --json`: the whole verdict on stdout; exit 0 or 2."""
    from backupagent.views import document, problem_view

    click.echo(
        document(
            config=str(path),
            ok=not problems,
            jobs=sorted(config.jobs) if config else None,
            destinations=sorted(config.destinations) if config else None,
            problems=[problem_view(p) for p in problems],
            warnings=[problem_view(w) for w in warnings],
        )
    )
    sys.exit(EXIT_USAGE if problems else EXIT_OK)


@cli.command("run-job", epilog=EXIT_CODES)
@job_argument
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only show what would be archived and dumped, and check the destinations' "
    "login and directory; write nothing. Exit 0, or 1 if the run would fail.",
)
@json_option
@click.pass_obj
def run_job_command(obj: _Context, job: str, dry_run: bool, as_json: bool) -> None:
    """Run one job now, in the foreground."""
    from backupagent.actions.backup import run_job
    from backupagent.progress import terminal_progress
    from backupagent.views import document, summary

    config = obj.job(job)
    if dry_run:
        _dry_run(config, job, as_json)
    cancel = _cancelled_by_signals()  # abort cleanly, remove what was uploaded
    try:
        with terminal_progress(sys.stderr) as progress:
            result = run_job(config, job, progress, cancel=cancel)
    except (JobLocked, SetupError) as exc:
        skipped = isinstance(exc, JobLocked)
        if as_json:  # the run never started: no summary, only what stopped it
            click.echo(document(job=job, result="skipped" if skipped else "failed", error=str(exc)))
        click.echo(f"skipped: {exc}" if skipped else f"{job}: FAILED — {exc}", err=True)
        sys.exit(EXIT_LOCKED if skipped else EXIT_FAILED)
    if as_json:
        click.echo(document(**summary(result)))
    else:
        print_summary(result)
    # the run is over, logged and recorded: only the standard streams are left to flush,
    # and skipping the interpreter's teardown of every module saves a tenth of a second
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(result.exit_code)


def _dry_run(config: Config, job: str, as_json: bool) -> NoReturn:
    from backupagent.actions.dry_run import dry_run
    from backupagent.summary import print_dry_run
    from backupagent.views import document, dry_run_view

    plan = dry_run(config, job)
    if as_json:
        click.echo(document(**dry_run_view(plan)))
    else:
        print_dry_run(plan)
    sys.exit(EXIT_OK if plan.ok else EXIT_FAILED)


@cli.command()
@job_argument
@click.option("--run", "run_id", help="Run id (the log file's name); default: the last run.")
@click.pass_obj
def logs(obj: _Context, job: str, run_id: str | None) -> None:
    """Print a run's debug log, human-readable, suggestion highlighted."""
    from backupagent.logview import render_log

    config = obj.job(job)
    paths = run_logs(config.agent.log_dir, job)
    if run_id:
        paths = [p for p in paths if p.stem == run_id]
    if not paths:
        which = f"run {run_id}" if run_id else "any run"
        click.echo(f"no log of {which} of job '{job}' in {config.agent.log_dir / job}", err=True)
        sys.exit(1)
    render_log(read_events(paths[-1]), _console(soft_wrap=True))


@cli.command()
@job_argument
@click.option("--destination", "only", metavar="NAME", help="Only this one of the job's.")
@click.pass_obj
def diagnose(obj: _Context, job: str, only: str | None) -> None:
    """Test the job's destinations step by step (FTP: connect, TLS, login, FEAT, then
    EPSV, PASV and active; local: mount, room, a write test)."""
    from backupagent.logging import run_log
    from backupagent.recording import new_run_id

    config = obj.job(job)
    names = [only] if only else config.jobs[job].destination_names
    if only and only not in config.jobs[job].destination_names:
        _usage(_not_a_destination(config, job, only))
    log_dir = config.agent.log_dir / "diagnose"
    run_id = new_run_id(dt.datetime.now(dt.UTC))
    out = _console(soft_wrap=True)
    printers = {"ftp": _diagnose_ftp}
    works = True
    with run_log(log_dir, job, run_id) as log_path:
        for name in names:
            printer = printers.get(config.destinations[name].type, _diagnose_steps)
            works &= printer(config, job, name, out)
    out.print(printable(f"Log: {log_path}"), markup=False)
    sys.exit(0 if works else 1)


def _destination(config: Config, job: str, only: str | None) -> str:
    """The destination a command works on: --destination, or the job's only one."""
    names = config.jobs[job].destination_names
    if only is None and len(names) > 1:
        _usage(f"job '{job}' has several destinations: give --destination ({', '.join(names)})")
    if only is not None and only not in names:
        _usage(_not_a_destination(config, job, only))
    return only or names[0]


def _not_a_destination(config: Config, job: str, name: str) -> str:
    known = ", ".join(config.jobs[job].destination_names)
    return f"--destination {name}: job '{job}' has no such destination (its: {known})"


def _diagnose_steps(config: Config, job: str, name: str, out: Any) -> bool:
    """`diagnose` for a destination type whose module has `checkup`: its steps."""
    import importlib

    from backupagent.destinations import OPENERS

    settings = config.destinations[name]
    where = getattr(settings, "path", None) or f"{getattr(settings, 'host', '')}"
    out.print(f"Destination {name!r} -> {where} ({settings.type})", markup=False)
    steps = importlib.import_module(OPENERS[settings.type]).checkup(config, job, name)
    for step in steps:
        mark = "ok  " if step.ok else "FAIL"
        line = f"  {mark} {step.name} ({step.seconds:.2f}s) {step.detail}"
        out.print(printable(line), markup=False)
    return all(step.ok for step in steps)


def _diagnose_ftp(config: Config, job: str, name: str, out: Any) -> bool:
    """`diagnose` for an FTP destination: the steps, every mode, and what to set."""
    from backupagent.destinations.ftp.checkup import configured_mode, run_checkup

    dest = config.destinations[name]
    assert dest.type == "ftp"

    def say(text: str) -> None:  # what the server said may hold escapes
        out.print(printable(text), markup=False)

    out.print(
        f"Destination {name!r} -> {dest.host}:{dest.effective_port} (tls = {dest.tls}), "
        f"as used by job {job!r}",
        markup=False,
    )

    def step(text: str) -> None:  # progress on stderr: stdout stays the report
        click.echo(f"  ... {text}", err=True)

    report = run_checkup(config, job, name, step)
    for outcome in report.steps:
        mark = "ok  " if outcome.ok else "FAIL"
        say(f"  {mark} {outcome.name} ({outcome.seconds:.2f}s) {outcome.detail}")
    for key, value in report.tls.items():
        say(f"  TLS {key}: {value}")
    if report.certificate is not None:
        cert = report.certificate
        state = "NOT ACCEPTED" if report.certificate_refused else "pinned by tls_fingerprint"
        say(f"  TLS certificate ({state}):")
        say(f"    subject:     {cert.subject}")
        say(f"    issuer:      {cert.issuer}")
        say(f"    valid until: {cert.not_after}")
        say(f"    SHA-256:     {cert.fingerprint}")
        if report.certificate_refused:
            out.print(
                f"  To trust it, under [destinations.{name}] in {config.path} give the CA's "
                "certificate as tls_ca_file, or pin this one: "
                f'tls_fingerprint = "{cert.fingerprint}" '
                "(compare the fingerprint with the server's admin first)",
                markup=False,
            )
    if report.features:
        say(f"  FEAT: {', '.join(report.features)}")
    if report.modes:
        rows = [
            [m.name, "works" if m.ok else "fails", f"{m.seconds:.2f}s", m.detail]
            for m in report.modes.values()
        ]
        _table(["mode", "result", "time", "reply or error"], rows, result_column=1)
        configured = configured_mode(config.passive_for(job, name), dest.epsv)
        if report.configured_works:
            say(f"The configured mode ({configured}) works; no change needed.")
        elif report.changes:
            tables = {
                "job": f"jobs.{job}",
                "destination": f"destinations.{name}",
            }
            changes = "; ".join(f"under [{tables[t]}] set {value}" for t, value in report.changes)
            out.print(
                f"The configured mode ({configured}) fails. Change: in {config.path}, {changes}",
                markup=False,
            )
        else:
            out.print(
                "No mode works from this host: a firewall blocks the data connection; "
                "ask for the server's passive port range and allow it.",
                markup=False,
            )
    return report.configured_works


@cli.command()
@click.pass_obj
def daemon(obj: _Context) -> None:
    """Run every job on its schedule until SIGTERM (what systemd starts)."""
    from backupagent.scheduler import Daemon  # APScheduler logs through logging.configure

    try:
        runner = Daemon(obj.config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(runner.serve())


@cli.command("list")
@json_option
@click.pass_obj
def list_jobs(obj: _Context, as_json: bool) -> None:
    """Jobs, their schedule, next run time and last result."""
    from backupagent.config import job_trigger
    from backupagent.limits import read_status
    from backupagent.outcome import BACKUP_TRIGGERS
    from backupagent.state import History, lock_held, lock_table, settled
    from backupagent.views import document, job_view

    config = obj.config()
    now = dt.datetime.now(dt.UTC)
    views = []
    daemon = read_status(config.agent.state_dir)
    queued = {re.sub(r" \((verify|drill)\)$", "", n) for n in daemon.queued} if daemon else set()
    locks = lock_table()  # once for every job
    with History(config.agent.state_dir) as history:
        for name, job in sorted(config.jobs.items()):
            fire = None
            if job.schedule:
                trigger = job_trigger(name, job.schedule, job.jitter, config.agent.timezone)
                fire = trigger.get_next_fire_time(None, now)
            held = lock_held(config.agent.state_dir, name, locks)
            last = history.last(name, triggers=BACKUP_TRIGGERS)  # a verify is not a backup
            last = settled(last, held) if last else None
            now_running = held and history.last(name, results=("running",)) is not None
            state = "running" if now_running else "queued" if name in queued else "idle"
            views.append((job_view(config, name, fire, last, state), last))
    if as_json:
        click.echo(document(jobs=[view for view, _ in views]))
        return
    rows = [
        [
            view["job"],
            view["state"],
            view["schedule"] or "-",
            _when(view["next_run"]) if view["schedule"] else "manual only",
            f"{last.result} ({_when(last.started)})" if last else "never run",
        ]
        for view, last in views
    ]
    _table(["job", "now", "schedule", "next run", "last result"], rows, result_column=4)


@cli.command()
@job_argument
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs.")
@json_option
@click.pass_obj
def history(obj: _Context, job: str, limit: int, as_json: bool) -> None:
    """Past runs of a job: start, duration, size, result, suggestion."""
    from backupagent.state import History, lock_held, lock_table, settled
    from backupagent.views import document, run_view

    config = obj.job(job)
    held = lock_held(config.agent.state_dir, job, lock_table())
    with History(config.agent.state_dir) as db:
        runs = [settled(run, held) for run in db.runs(job, limit=limit)]
    if as_json:
        click.echo(document(job=job, runs=[run_view(run) for run in runs]))
        return
    rows = [
        [
            run.run_id,
            _when(run.started),
            f"{run.seconds:.1f}s" if run.seconds is not None else "-",
            _moved(run),
            run.result,
            run.trigger,
            _note(run.error or "", run.suggestion or ""),
        ]
        for run in runs
    ]
    _table(["run", "started", "took", "bytes", "result", "trigger", "note"], rows, 4)


def _moved(run: Any) -> str:
    """What a run moved: a backup uploads, a verify or a drill reads."""
    from backupagent.outcome import BACKUP_TRIGGERS

    if run.bytes_uploaded is None:
        return "-"
    verb = "uploaded" if run.trigger in BACKUP_TRIGGERS else "read"
    return f"{_size(run.bytes_uploaded)} {verb}"


def _note(error: str, suggestion: str) -> str:
    """What failed, and the last line of the suggestion (its change or advice): the
    part worth a column."""
    lines = suggestion.strip().splitlines()
    advice = lines[-1] if lines else ""
    if advice == error or not advice:
        return error
    return f"{error} — {advice}" if error else advice


def _when(moment: dt.datetime | str | None) -> str:
    """The one format of a time people read (views.when); "never" for none."""
    from backupagent.views import parse_time, when

    if isinstance(moment, str):
        moment = parse_time(moment)
    return when(moment) if moment else "never"


def _table(headers: list[str], rows: list[list[str]], result_column: int) -> None:
    """A rich table on a terminal; tab-separated lines (with a header) when piped."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    out = _console()
    rows = [[printable(cell, keep="") for cell in row] for row in rows]
    if not out.is_terminal:
        for row in [headers, *rows]:
            click.echo("\t".join(row))
        return
    table = Table(*headers, box=box.SIMPLE_HEAD)
    for row in rows:
        result = row[result_column].split(" ", 1)[0]
        table.add_row(*map(escape, row), style=_RESULT_STYLES.get(result, ""))
    out.print(table)


_RESULT_STYLES = {"failed": "red", "aborted": "red", "warning": "yellow", "fails": "red"}


@cli.command()
@job_argument
@destination_option
@json_option
@click.pass_obj
def backups(obj: _Context, job: str, only: str | None, as_json: bool) -> None:
    """Complete backups on the destination (and incomplete leftovers)."""
    from backupagent.retrieve import list_backups
    from backupagent.views import backup_view, document

    config = obj.job(job)
    name = _destination(config, job, only)
    found, leftovers = _or_exit(lambda: list_backups(config, job, name))
    if as_json:
        click.echo(
            document(
                job=job,
                destination=name,
                backups=[backup_view(b) for b in found],
                incomplete=leftovers,
            )
        )
        return
    rows = [
        [
            b.backup_id,
            _when(b.created),
            _size(b.size),
            str(len(b.volumes)),
            str(b.files),
            ", ".join(b.databases) or "-",
        ]
        if b.readable
        else [b.backup_id, "-", "-", "-", "-", f"UNREADABLE: {b.problem}"]
        for b in found
    ]
    headers = ["backup", "created", "size", "volumes", "files", "databases"]
    if config.jobs[job].incremental:  # each point's kind and what it builds on
        headers += ["kind", "parent"]
        rows = [[*row, b.kind or "-", b.parent or "-"] for row, b in zip(rows, found, strict=True)]
    _table(headers, rows, result_column=0)
    if leftovers:
        click.echo(f"incomplete (no manifest; not backups): {len(leftovers)}")
        for name in leftovers:
            click.echo(f"  {name}")


@cli.command()
@job_argument
@backup_option
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="An empty directory to restore into.",
)
@click.option(
    "--load-database",
    "load",
    metavar="NAME",
    help="Load this dump (MySQL NAME.sql or PostgreSQL NAME.pgdump) into --into.",
)
@click.option("--into", metavar="DATABASE", help="The database to load it into.")
@click.option(
    "--db-socket",
    type=click.Path(path_type=Path),
    help="MySQL socket, or PostgreSQL socket directory, for --into.",
)
@click.option("--db-host", help="Database server host for --into.")
@click.option("--db-port", type=int, help="Database server port for --into.")
@click.option("--db-user", help="Database user for --into.")
@click.option(
    "--db-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding that user's password.",
)
@click.option(
    "--overwrite-live",
    is_flag=True,
    help="Allow --into to name the very database the job backs up.",
)
@identity_option
@click.option(
    "--outside-links",
    is_flag=True,
    help="Also create symbolic links that point outside DIR (made last, never followed).",
)
@click.option(
    "--include",
    "include",
    multiple=True,
    metavar="PATTERN",
    help="Restore only what this glob matches (repeatable): /var/www/html/wp-content/uploads, "
    "databases/wp.sql, or a path matched at any depth (uploads/2026/11).",
)
@destination_option
@click.pass_obj
def restore(
    obj: _Context,
    job: str,
    only: str | None,
    wanted: str,
    target: Path,
    load: str | None,
    into: str | None,
    db_socket: Path | None,
    db_host: str | None,
    db_port: int | None,
    db_user: str | None,
    db_password_file: Path | None,
    overwrite_live: bool,
    identity: Path | None,
    outside_links: bool,
    include: tuple[str, ...],
) -> None:
    """Download a backup, verify it, extract it safely; load a database on request."""
    from backupagent.actions.restore import Load, UsageError, load_dump
    from backupagent.actions.restore import restore as restore_backup
    from backupagent.retrieve import private_directory

    config = obj.job(job)
    if load and not into:
        _usage("--load-database needs --into DATABASE (a database to create or fill)")
    loading = None
    if load and into:
        password = db_password_file.read_text().splitlines()[0] if db_password_file else None
        loading = Load(load, into, db_host, db_port, db_socket, db_user, password, overwrite_live)
    identities = _identities(identity)
    name = _destination(config, job, only)
    try:
        done = _or_exit(
            lambda: restore_backup(
                config,
                job,
                target,
                wanted,
                identities,
                outside_links,
                loading,
                name,
                list(include) or None,
            )
        )
    except UsageError as exc:
        _usage(str(exc))
    report = done.report
    click.echo(
        f"restored {done.backup.backup_id} into {target}: {report.files} files, "
        f"{report.directories} directories, {report.symlinks} symlinks, "
        f"{report.hardlinks} hard links"
    )
    for note in report.skipped:
        click.echo(f"  skipped {printable(note)}")  # member names come from the archive
    if loading is not None:
        spool = _or_exit(lambda: private_directory(config.agent.spool_dir / job, "spool_dir"))
        dump = _or_exit(lambda: load_dump(target, loading, spool))
        click.echo(f"loaded {dump.name} into database {into}")


@cli.command()
@job_argument
@backup_option
@identity_option
@destination_option
@click.option(
    "--sample",
    type=click.FloatRange(0, 100, min_open=True),
    metavar="PERCENT",
    help="Read back only this share of the volumes, those not read back lately first.",
)
@json_option
@click.pass_obj
def verify(
    obj: _Context,
    job: str,
    wanted: str,
    identity: Path | None,
    only: str | None,
    sample: float | None,
    as_json: bool,
) -> None:
    """Download a backup, check its hashes and read it to the end, without extracting."""
    from backupagent.actions.verify import verify as verify_backup
    from backupagent.views import document

    config = obj.job(job)
    identities, name = _identities(identity), _destination(config, job, only)
    ok, message, log_path = _recorded(
        lambda: verify_backup(
            config, job, wanted, identities=identities, destination=name, sample=sample
        )
    )
    if as_json:
        result = "success" if ok else "failed"
        click.echo(document(job=job, result=result, message=message, log=str(log_path)))
    else:
        click.echo(("OK: " if ok else "FAILED: ") + printable(message))
        click.echo(f"Log: {log_path}")
    sys.exit(0 if ok else 1)


@cli.command()
@job_argument
@identity_option
@destination_option
@json_option
@click.pass_obj
def drill(obj: _Context, job: str, identity: Path | None, only: str | None, as_json: bool) -> None:
    """Restore drill: load the newest backup's dumps into scratch databases and compare
    every table's rows with the counts taken at dump time; remove them afterwards."""
    from backupagent.actions.drill import drill as drill_backup
    from backupagent.views import document, drill_view

    config = obj.job(job)
    identities, name = _identities(identity), _destination(config, job, only)
    cancel = _cancelled_by_signals()  # scratch databases are dropped on the way out
    drilled = _recorded(lambda: drill_backup(config, job, cancel, identities, name))
    if as_json:
        click.echo(document(**drill_view(job, drilled)))
    else:
        verdict = {"success": "OK", "warning": "OK, with a warning"}.get(drilled.outcome)
        click.echo(f"{verdict or drilled.outcome.upper()}: {printable(drilled.message)}")
        for dump in drilled.dumps:
            where = f" into {dump.into}" if dump.into else ""
            state = "; ".join(dump.problems) or (
                f"{count(dump.tables, 'table')}, {count(dump.rows, 'row')}, as counted at dump time"
                if dump.compared
                else "loaded; no counts recorded to compare"
            )
            click.echo(f"  {printable(dump.member)}{where}: {printable(state)}")
        click.echo(f"Log: {drilled.log_path}")
    sys.exit(0 if drilled.ok else 1)


@cli.command()
@job_argument
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted and why.")
@destination_option
@json_option
@click.pass_obj
def prune(obj: _Context, job: str, dry_run: bool, only: str | None, as_json: bool) -> None:
    """Apply retention now: print each backup kept or deleted, with the reason."""
    from backupagent.actions.prune import Plan, prune_job
    from backupagent.views import document

    config = obj.job(job)

    def show(plan: Plan) -> None:
        if as_json:  # printed before anything is deleted, as the text is
            decisions = [
                {"backup_id": d.backup.backup_id, "keep": d.keep, "reasons": list(d.reasons)}
                for d in plan.decisions
            ]
            click.echo(document(job=job, dry_run=dry_run, backups=decisions, stale=plan.stale))
            return
        for d in plan.decisions:
            verdict = "keep  " if d.keep else "delete"
            click.echo(f"{verdict} {d.backup.backup_id}  ({'; '.join(d.reasons)})")
        for name in plan.stale:
            click.echo(
                f"delete {name}  (left by a run that started over {plan.grace_hours:g} h ago)"
            )
        if dry_run:
            click.echo("dry run: nothing deleted")

    try:
        _or_exit(lambda: prune_job(config, job, dry_run, show, _destination(config, job, only)))
    except JobLocked as exc:
        click.echo(f"skipped: {exc}", err=True)
        sys.exit(EXIT_LOCKED)


@cli.command("files")
@job_argument
@backup_option
@identity_option
@destination_option
@json_option
@click.pass_obj
def files_command(
    obj: _Context, job: str, wanted: str, identity: Path | None, only: str | None, as_json: bool
) -> None:
    """What a backup holds: path, type, size, mtime (an incremental: the whole point)."""
    from backupagent.actions.restore import fetching
    from backupagent.retrieve import listing
    from backupagent.views import member_view, streamed

    config = obj.job(job)
    name = _destination(config, job, only)
    identities = _identities(identity)

    def show() -> None:
        with fetching(config, job, wanted, identities, name) as source:
            rows = (member_view(m) for m in listing(source, identities))
            if as_json:
                head = {"job": job, "backup_id": source.backup.backup_id}
                for piece in streamed(head, "members", rows):
                    click.echo(piece, nl=False)
                return
            click.echo("type\tsize\tmodified\tpath")
            for row in rows:
                link = f" -> {row['link']}" if row["link"] else ""
                fields = [row["type"], str(row["size"]), _when(row["mtime"]), row["path"] + link]
                # names come from the archive: escaped one by one, tabs in them too
                click.echo("\t".join(printable(f, keep="") for f in fields))

    _or_exit(show)


def _identities(path: Path | None) -> list[Any] | None:
    """The identities in an age identity file; a bad file is a usage error."""
    from backupagent.crypto import CryptoError, load_identities

    if path is None:
        return None
    try:
        return load_identities(path)
    except CryptoError as exc:
        _usage(str(exc))


@cli.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the private identity (mode 0600); must not exist yet.",
)
def keygen(out: Path) -> None:
    """Make an age key pair: the public key goes in jobs.toml, the identity off this host."""
    from backupagent.crypto import generate

    identity, recipient = generate()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _usage(f"{out} exists; not overwriting a key")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# created by backupagent keygen\n# public key: {recipient}\n{identity}\n")
    click.echo(
        f"identity written to {out}: keep it off this host; backups need only the public key"
    )
    click.echo(f'in jobs.toml: encrypt_to = ["{recipient}"]')


def _console(**options: Any) -> Any:
    """A rich console, imported only when something is printed with it."""
    from rich.console import Console

    return Console(highlight=False, **options)


def _or_exit(action: Callable[[], T]) -> T:
    """Run an action; a RestoreError or a destination's failure ends the command with exit 1."""
    from backupagent.destinations.base import DestinationError
    from backupagent.retrieve import RestoreError
    from backupagent.sources.databases import DumpFailed

    try:
        return action()
    except (RestoreError, DestinationError) as exc:
        _fail_exit(str(exc) or type(exc).__name__)
    except DumpFailed as exc:
        _fail_exit(f"{exc.diagnosis.what}: {' / '.join(exc.diagnosis.evidence)}")


def _cancelled_by_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set: the run stops cleanly and is recorded."""
    cancel = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: cancel.set())
    return cancel


def _recorded(action: Callable[[], T]) -> T:
    """Run a recorded run that is not a backup (verify, drill): exit 75 while the job
    runs, 1 when the agent's directories cannot be made."""
    try:
        return action()
    except JobLocked as exc:
        click.echo(f"skipped: {exc}", err=True)
        sys.exit(EXIT_LOCKED)
    except SetupError as exc:
        _fail_exit(str(exc))


def _fail_exit(message: str) -> NoReturn:
    click.echo(f"error: {printable(message)}", err=True)  # it may quote the server
    sys.exit(EXIT_FAILED)


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@cli.command()
@click.option("--clean", is_flag=True, help="Remove the demo's files afterwards.")
def demo(clean: bool) -> None:
    """Run an example job against a throwaway FTP server on 127.0.0.1."""
    from backupagent.demo import run_demo

    sys.exit(run_demo(keep=not clean))


@cli.group("config")
def config_group() -> None:
    """jobs.toml itself."""


@config_group.command("generate")
def config_generate() -> None:
    """Print the example jobs.toml, every key with its default or an example value."""
    from importlib.resources import files

    click.echo(files("backupagent").joinpath("share/jobs.example.toml").read_text(), nl=False)


def main() -> None:
    cli(prog_name="backupagent")
