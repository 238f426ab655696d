"""The end-of-run report printed by `run-job` and `demo`: outcome, warnings, the
suggestion, where the log is. Styled on a terminal, plain text (no rich) otherwise."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from backupagent.outcome import Outcome, RunResult

if TYPE_CHECKING:
    from backupagent.actions.dry_run import DryRun
from backupagent.text import printable


def print_summary(result: RunResult) -> None:
    """The end-of-run report: outcome, warnings, suggestion, where the log is."""
    lines: list[list[tuple[str, str]]] = []  # each line: (text, style) parts
    if result.ok:
        s = result.stats
        assert s is not None
        head = "OK" if result.outcome == "success" else "OK with warnings"
        lines.append(
            [
                (f"{result.job}: {head}", "bold green"),
                (
                    f" — backup {result.backup_id} published: {s.files} files, "
                    f"{size(s.bytes_read)} read, {size(s.archive_bytes)} archive, "
                    f"{result.seconds:.1f}s",
                    "",
                ),
            ]
        )
    else:
        head = "ABORTED" if result.outcome == Outcome.ABORTED else "FAILED"
        lines.append(
            [
                (f"{result.job}: {head}", "bold red"),
                (f" — {result.error}; nothing was published.", ""),
            ]
        )
    if len(result.destinations) > 1:
        for entry in result.destinations:
            word = {"success": "OK", "aborted": "not completed"}.get(entry.outcome, "FAILED")
            detail = f" — {entry.error}" if entry.error else ""
            style = "green" if entry.outcome == "success" else "red"
            lines.append([(f"  {entry.name}: ", ""), (word, style), (detail, "")])
    if result.warnings:
        lines.append([(f"{len(result.warnings)} warning(s):", "yellow")])
        lines.extend([(f"  {warning}", "")] for warning in result.warnings[:20])
        if len(result.warnings) > 20:
            lines.append([(f"  … and {len(result.warnings) - 20} more in the log", "")])
    if result.suggestion:
        # its first sentence is the headline's: say it once; the evidence, then the advice
        body = result.suggestion.removeprefix(f"Job '{result.job}': {result.error}.").lstrip("\n")
        evidence, advice = evidence_and_advice(body)
        if evidence:
            lines.append([("Evidence:", "bold")])
            lines.extend([(line, "")] for line in evidence)
        if advice:
            lines.append([("Suggestion:", "bold yellow")])
            lines.append([(advice, "")])
    lines.append([(f"Log: {result.log_path}", "")])
    _print_lines(lines)


def evidence_and_advice(body: str) -> tuple[list[str], str]:
    """A suggestion's text (diagnosis.advice) taken apart: the indented lines under its
    leading `Evidence:`, and what follows them (the change to make)."""
    rows = body.split("\n")
    if not rows or rows[0] != "Evidence:":
        return [], body
    end = 1
    while end < len(rows) and rows[end].startswith("  "):
        end += 1
    return rows[1:end], "\n".join(rows[end:]).strip("\n")


def print_dry_run(plan: DryRun) -> None:
    """What `run-job --dry-run` found, and whether anything would stop the run."""
    lines: list[list[tuple[str, str]]] = [
        [(f"{plan.job}: dry run", "bold"), (" — nothing was written anywhere.", "")]
    ]
    files = sum(s.files for s in plan.sources)
    total = sum(s.bytes for s in plan.sources)
    lines.append([(f"Would archive {count(files, 'file')}, {size(total)}:", "")])
    for source in plan.sources:
        counts = ", ".join(
            count(n, noun)
            for n, noun in (
                (source.files, "file"),
                (source.directories, "directory"),
                (source.symlinks, "link"),
                (source.other, "special file"),
            )
            if n or noun == "file"
        )
        lines.append([(f"  {source.path}: {counts}, {size(source.bytes)}", "")])
        for gone in source.excluded:
            what = count(gone.files, "file")
            if gone.directories:
                what += f" in {count(gone.directories, 'directory')}"
            lines.append([(f"    excluded by {gone.pattern}: {what}, {size(gone.bytes)}", "")])
        for warning in source.warnings[:20]:
            lines.append([(f"    warning: {warning}", "yellow")])
        if len(source.warnings) > 20:
            lines.append([(f"    … and {len(source.warnings) - 20} more warnings", "yellow")])
    if plan.incremental:
        lines.append([("  (counted as a full: an incremental run archives only what changed)", "")])
    for dump in plan.dumps:
        head = f"Database: {dump.engine} {dump.name} on {dump.server}"
        if dump.problem:
            lines.append([(f"{head}: ", ""), (f"cannot be dumped: {dump.problem}", "red")])
            if dump.advice:
                lines.append([(f"  {dump.advice}", "")])
        else:
            logged_in = "" if dump.engine == "sqlite" else ": logged in"
            lines.append([(f"{head}, by {dump.tool}{logged_in}", "")])
    for dest in plan.destinations:
        head = f"Destination {dest.name} ({dest.type} {dest.where}): "
        if dest.error is not None:
            lines.append([(head, ""), (f"FAILED: {dest.error}", "red")])
            lines.extend([(f"  {line}", "")] for line in (dest.suggestion or "").splitlines())
            continue
        if not dest.directory_exists:
            state = (
                "reached; the directory does not exist yet: a run creates it, and whether "
                "this user may was not tried (a dry run creates nothing)"
            )
        else:
            newest = f", newest {dest.newest}" if dest.newest else ""
            state = f"reached; {count(dest.backups, 'backup')} of this job there{newest}"
        lines.append([(head, ""), (state, "green")])
    lines.append([(f"Encrypted: {'yes' if plan.encrypted else 'no'}", "")])
    for name, command in plan.hooks.items():
        lines.append([(f"Hook {name} (not run by a dry run): {command}", "")])
    for problem in plan.problems:
        lines.append([(problem, "red")])
    if plan.ok:
        lines.append([("OK: nothing found that would stop the run.", "bold green")])
    else:
        lines.append([("The run would FAIL: see above.", "bold red")])
    _print_lines(lines)


def count(n: int, noun: str) -> str:
    """`1 job`, `2 destinations`, `1,204 directories`."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n:,} {noun if n == 1 else plural}"


def _print_lines(lines: list[list[tuple[str, str]]]) -> None:
    """Styled on a terminal; plain text otherwise, without importing rich (run-job under
    cron or systemd pays nothing for colours nobody sees)."""
    lines = [[(printable(text), style) for text, style in parts] for parts in lines]
    if not sys.stdout.isatty():
        for parts in lines:
            click.echo("".join(text for text, _ in parts))
        return
    from rich.console import Console
    from rich.text import Text

    out = Console(highlight=False, soft_wrap=True)
    for parts in lines:
        out.print(Text.assemble(*parts))


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
