"""What `check` can know before a run by looking at this host: sources that are missing
or unreadable, WordPress sites whose settings cannot be read, the agent's own
directories that cannot be made or written. Each problem names its table and key."""

from __future__ import annotations

import os
from pathlib import Path

from backupagent.config import Config, Job, Problem


def host_problems(config: Config) -> list[Problem]:
    """Every problem found; an empty list when a run would get past its set-up."""
    label = config.path.name
    problems = []
    for key in ("state_dir", "log_dir", "spool_dir"):
        path = getattr(config.agent, key)
        if (reason := _unwritable(path)) is not None:
            problems.append(Problem(label, f"{path} {reason}", "agent", key))
    for name, job in sorted(config.jobs.items()):
        here = config.label_of(f"jobs.{name}")
        for source in job.sources:
            if (reason := _unreadable(source)) is not None:
                problems.append(Problem(here, f"{source} {reason}", f"jobs.{name}", "sources"))
        if job.wordpress is not None:
            found = _wordpress(job.wordpress, job)
            problems += [Problem(here, p, f"jobs.{name}", "wordpress") for p in found]
        if job.drill_server == "local":
            problems += [
                Problem(here, reason, f"jobs.{name}", "drill_server")
                for reason in _throwaway_servers(job)
            ]
    return problems


def _throwaway_servers(job: Job) -> list[str]:
    """What a local drill of the job's dumps would lack."""
    from backupagent.sources.servers import ServerFailed, installed

    engines = {d.type for d in job.databases} | ({"mysql"} if job.wordpress else set())
    missing = []
    for engine in sorted(engines & {"mysql", "postgresql"}):
        try:
            installed(engine)
        except ServerFailed as exc:
            missing.append(str(exc))
    return missing


def _unreadable(path: Path) -> str | None:
    """Why a source could not be walked, or None."""
    try:
        if not path.is_dir():
            return "is not a directory" if path.exists() else "does not exist"
    except OSError as exc:  # a parent this user may not search
        return f"cannot be reached by this user (uid {os.geteuid()}): {exc.strerror or exc}"
    try:
        with os.scandir(path) as listing:
            next(listing, None)
    except OSError as exc:
        return f"cannot be read by this user (uid {os.geteuid()}): {exc.strerror or exc}"
    return None


def _unwritable(path: Path) -> str | None:
    """Why the agent could not make or write one of its directories, or None."""
    existing = path
    while not os.path.exists(existing) and existing != existing.parent:  # False if unsearchable
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be made: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            return f"cannot be written by this user (uid {os.geteuid()})"
        return f"cannot be made by this user (uid {os.geteuid()}): {existing} is not writable"
    return None


def _wordpress(root: Path, job: Job) -> list[str]:
    from backupagent.sources.wordpress import WordPressError, read_site

    if (reason := _unreadable(root)) is not None:
        return [f"{root} {reason}"]
    try:
        read_site(root, job)
    except WordPressError as exc:
        return [f"{exc.config_file}: {p}" for p in exc.problems]
    return []
