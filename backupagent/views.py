"""What the commands report, as plain data: one dict per job, run, backup or problem,
for `--json` (and the summary a ping POSTs), and the one way a time is shown to people.

The JSON schema (README, "JSON output") is a contract: every key is always present
(null when unknown), times are ISO 8601 in UTC with a `Z` and whole seconds (what jq's
`fromdate` reads), sizes are bytes, durations seconds. Each document carries `format`;
keys may be added, none renamed or removed, without raising it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import tarfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from backupagent.outcome import RunResult

if TYPE_CHECKING:
    from backupagent.actions.drill import Drilled
    from backupagent.actions.dry_run import DryRun
    from backupagent.config import Config, Problem
    from backupagent.retrieve import BackupInfo
    from backupagent.state import Run

FORMAT = 1


def document(**fields: Any) -> str:
    """A JSON document for stdout. Escaped to ASCII: text a server sent (an error, a
    backup's problem) reaches a terminal without a control character."""
    return json.dumps({"format": FORMAT, **fields}, indent=2, ensure_ascii=True)


def streamed(head: dict[str, Any], key: str, rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """`document(**head, key=[rows])` in pieces, a row at a time: a backup may hold
    millions of members, and they need not sit in memory."""
    text = document(**head, **{key: []})
    yield text[: text.rindex("[") + 1]
    first = True
    for row in rows:
        yield ("\n" if first else ",\n") + "    " + json.dumps(row, ensure_ascii=True)
        first = False
    yield "\n  ]\n}\n" if not first else "]\n}\n"


def utc(moment: dt.datetime | None) -> str | None:
    """`2026-12-06T03:00:00Z`."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def when(moment: dt.datetime | None) -> str:
    """The one time format people see: local time with its zone, `2026-12-06 04:00:00 CET`."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def parse_time(text: str | None) -> dt.datetime | None:
    """An ISO 8601 time from a manifest or log (which a server may have altered); a
    time without a zone is UTC; None when it is not one."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def job_view(
    config: Config, name: str, next_run: dt.datetime | None, last: Run | None, state: str
) -> dict[str, Any]:
    """A row of `list`; `state` is "running", "queued" (in the daemon) or "idle"."""
    job = config.jobs[name]
    return {
        "job": name,
        "state": state,
        "discovered": name in config.discovered,
        "schedule": job.schedule,
        "next_run": utc(next_run),
        "destinations": job.destination_names,
        "incremental": job.incremental,
        "last_run": run_view(last) if last else None,
    }


def run_view(run: Run) -> dict[str, Any]:
    """A row of `history` (and a job's last run in `list`)."""
    return {
        "run_id": run.run_id,
        "job": run.job,
        "trigger": run.trigger,
        "result": run.result,
        "started": utc(run.started),
        "finished": utc(run.finished),
        "seconds": round(run.seconds, 3) if run.seconds is not None else None,
        "bytes_archived": run.bytes_archived,
        "bytes_uploaded": run.bytes_uploaded,
        "archive": run.archive,
        "warnings": run.warnings,
        "error": run.error,
        "suggestion": run.suggestion,
        "log": run.log_path,
        "destinations": [
            {"name": d.get("name"), "result": d.get("result"), "error": d.get("error")}
            for d in run.destination_results
        ],
    }


def backup_view(backup: BackupInfo) -> dict[str, Any]:
    """A row of `backups`. An unreadable manifest leaves only the id and the problem."""
    manifest = backup.manifest
    return {
        "backup_id": backup.backup_id,
        "readable": manifest is not None,
        "problem": backup.problem or None,
        "created": utc(parse_time(backup.created)),
        "bytes": backup.size if manifest else None,
        "volumes": len(backup.volumes) if manifest else None,
        "files": backup.files if manifest else None,
        "databases": backup.databases,
        "encrypted": backup.encrypted if manifest else None,
        "kind": backup.kind or None,
        "parent": backup.parent,
    }


def problem_view(problem: Problem) -> dict[str, Any]:
    """A problem `check` found: where (file, table, key) and what, and the line printed."""
    return {
        "file": problem.file,
        "table": problem.table,
        "key": problem.key,
        "message": problem.message,
        "text": str(problem),
    }


def summary(result: RunResult) -> dict[str, Any]:
    """What a run did: `run-job --json`, and the body a ping POSTs (post_summary)."""
    stats = result.stats
    return {
        "job": result.job,
        "host": socket.gethostname(),
        "run_id": result.run_id,
        "trigger": result.trigger,
        "result": result.outcome,
        "backup_id": result.backup_id,
        "archive": result.archive,
        "started": utc(result.started),
        "finished": utc(result.finished),
        "seconds": round(result.seconds, 3),
        "files": stats.files if stats else None,
        "bytes_archived": stats.bytes_read if stats else None,
        "bytes_uploaded": stats.archive_bytes if stats and result.backup_id else None,
        "warnings": result.warnings,
        "error": result.error,
        "suggestion": result.suggestion,
        "log": str(result.log_path),
        "destinations": [d.view() for d in result.destinations],
    }


def drill_view(job: str, drilled: Drilled) -> dict[str, Any]:
    """`drill --json`: the backup drilled, the verdict, and each dump's comparison."""
    return {
        "job": job,
        "backup_id": drilled.backup_id,
        "result": drilled.outcome,
        "message": drilled.message,
        "files": drilled.files,
        "databases": [
            {
                "member": d.member,
                "engine": d.engine,
                "scratch_database": d.into,
                "tables": d.tables,
                "rows": d.rows,
                "compared": d.compared,
                "problems": d.problems,
            }
            for d in drilled.dumps
        ],
        "log": str(drilled.log_path),
    }


def dry_run_view(plan: DryRun) -> dict[str, Any]:
    """`run-job --dry-run --json`: what a run would archive, dump and reach."""
    return {"ok": plan.ok, **dataclasses.asdict(plan)}


MEMBER_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "directory",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
}


def member_view(member: tarfile.TarInfo) -> dict[str, Any]:
    """A row of `files`: a file as its original path, a dump as `databases/NAME`; the
    archive is a server's bytes, so a time that is not one is null."""
    name = member.name
    try:
        mtime = utc(dt.datetime.fromtimestamp(member.mtime, dt.UTC))
    except (OverflowError, OSError, ValueError):
        mtime = None
    link = member.linkname if member.issym() or member.islnk() else None
    return {
        "path": "/" + name.removeprefix("files/") if name.startswith("files/") else name,
        "type": MEMBER_TYPES.get(member.type, "other"),
        "size": member.size if member.isreg() else 0,
        "mtime": mtime,
        "link": "/" + link.removeprefix("files/") if member.islnk() and link else link,
    }
