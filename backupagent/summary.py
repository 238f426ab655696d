"""The end-of-run report printed by `run-job` and `demo`: outcome, warnings, the
suggestion, where the log is. Styled on a terminal, plain text (no rich) otherwise."""

from __future__ import annotations

import sys

import click

from backupagent.outcome import Outcome, RunResult
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
        # its first sentence is the headline's: say it once
        body = result.suggestion.removeprefix(f"Job '{result.job}': {result.error}.").lstrip("\n")
        lines.append([("Suggestion:", "bold yellow")])
        lines.append([(body, "")])
    lines.append([(f"Log: {result.log_path}", "")])
    _print_lines(lines)


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
