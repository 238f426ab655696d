"""Rendering a run's JSON-lines debug log for people (`backupagent logs`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from backupagent.text import printable
from backupagent.views import parse_time, when

HIDDEN = {"event", "level", "timestamp", "job", "run_id", "logger", "direction", "text"}
STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


def render_log(events: list[dict[str, Any]], out: Console) -> None:
    """One line per event; the suggestion as a highlighted block at the end."""
    if events:
        first = events[0]
        started = when(parse_time(str(first.get("timestamp", ""))))
        head = f"job {first.get('job')}  run {first.get('run_id')}  started {started}"
        out.print(printable(head), style="bold", markup=False)
    for event in events:
        if event.get("event") == "suggestion":
            body = Text(printable(str(event.get("text", ""))))
            if out.is_terminal:
                out.print(Panel(body, title="Suggestion", border_style="bold yellow"))
            else:
                out.print("=" * 20 + " SUGGESTION " + "=" * 20, markup=False)
                out.print(body)
                out.print("=" * 52, markup=False)
            continue
        out.print(
            printable(_line(event)), style=STYLES.get(event.get("level", "info"), ""), markup=False
        )


def _line(event: dict[str, Any]) -> str:
    moment = parse_time(str(event.get("timestamp", "")))
    time = moment.astimezone().strftime("%H:%M:%S") if moment else "--:--:--"
    level = str(event.get("level", "")).upper()
    extras = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in HIDDEN and v is not None and k != "mode"
    )
    mode = f"[{event['mode']}] " if "mode" in event and event["event"].startswith("FTP") else ""
    return f"{time} {level:7} {mode}{event.get('event')}" + (f"  {extras}" if extras else "")
