"""Time to advice: how long `backupagent run-job` takes, from its start to the printed
suggestion, for every failure a user meets first, with every timeout at its default
(the agent's and the server's). Runs the system-test lab (network namespaces, real
servers, iptables), so it needs root and what `.ci/run` installs.

    .venv/bin/python bench/time_to_advice.py [--servers vsftpd,proftpd,pure-ftpd] [--markdown]

Prints one row per case: case, server, seconds, verdict (the suggestion's category and
the change it names), and whether that verdict is the right one. Exits 1 if any case
took over 90 s or got the wrong verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system.lab import SERVER_ADDR, Lab, missing_parts, open_lab

LIMIT = 90.0


@dataclass(frozen=True)
class Case:
    name: str
    passive: bool
    expect: str  # the suggestion's category
    change: str | None  # the change it must name
    arrange: Callable[[Lab], None] = lambda lab: None
    replace: tuple[tuple[str, str], ...] = ()  # in the lab's jobs.toml
    job: str = ""
    password: str | None = None
    servers: tuple[str, ...] = ("vsftpd", "proftpd", "pure-ftpd")
    lab: tuple[tuple[str, object], ...] = ()  # options for the lab (open_lab)


def _both(lab: Lab) -> None:
    lab.block_active()
    lab.block_passive()


def _locked_dir(lab: Lab) -> None:
    """A directory the FTP user may not write (root's, mode 0555), in the user's home."""
    (lab.ftp_root / "locked").mkdir(mode=0o555)


def _drop_all(lab: Lab) -> None:
    lab.iptables(lab.server_ns, "-A", "INPUT", "-p", "tcp", "--dport", "21", "-j", "DROP")


CASES = (
    Case(
        "client firewall drops inbound (active mode)",
        False,
        "active_data_connection",
        "passive = true",
        Lab.block_active,
    ),
    Case(
        "server firewall drops its passive ports",
        True,
        "passive_data_connection",
        "passive = false",
        Lab.block_passive,
    ),
    Case("both directions blocked", True, "passive_data_connection", None, _both),
    Case(
        "server down (connection refused)",
        True,
        "host_unreachable",
        None,
        Lab.kill_server,
        servers=("vsftpd",),
    ),
    Case(
        "unreachable address (packets dropped)",
        True,
        "host_unreachable",
        None,
        _drop_all,
        servers=("vsftpd",),
    ),
    Case(
        "wrong port",
        True,
        "host_unreachable",
        None,
        replace=((f'host = "{SERVER_ADDR}"', f'host = "{SERVER_ADDR}"\nport = 2121'),),
        servers=("vsftpd",),
    ),
    Case(
        "DNS failure",
        True,
        "host_unreachable",
        None,
        replace=((f'host = "{SERVER_ADDR}"', 'host = "ftp.backupagent-test.invalid"'),),
        servers=("vsftpd",),
    ),
    Case("wrong password", True, "login", None, password="wrong-password"),
    Case("server requires TLS, job has none", True, "tls", None, lab=(("tls", True),)),
    Case(
        "missing directory (cannot be created)",
        True,
        "path_or_permission",
        None,
        _locked_dir,
        replace=(('directory = "backups/site"', 'directory = "locked/backups"'),),
    ),
)


def _config(lab: Lab, case: Case) -> Path:
    path = lab.write_config(
        passive=case.passive, job=case.job, **({"password": case.password} if case.password else {})
    )
    text = path.read_text()
    for old, new in case.replace:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def measure(case: Case, server: str) -> dict[str, object]:
    with open_lab({"server": server, **dict(case.lab)}) as lab:
        config = _config(lab, case)
        case.arrange(lab)
        started = time.monotonic()
        result = lab.agent(config, "run-job", "site")
        seconds = time.monotonic() - started
        logs = sorted((lab.base / "log" / "site").glob("*.jsonl"))
        events = [json.loads(line) for line in logs[-1].read_text().splitlines()] if logs else []
    suggestion = next((e for e in reversed(events) if e["event"] == "suggestion"), {})
    category, change = suggestion.get("category"), suggestion.get("change")
    right = result.returncode == 1 and category == case.expect and change == case.change
    return {
        "case": case.name,
        "server": server,
        "seconds": round(seconds, 1),
        "verdict": f"{category}" + (f" -> {change}" if change else ""),
        "right": right,
        "exit": result.returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="vsftpd,proftpd,pure-ftpd")
    parser.add_argument("--markdown", action="store_true", help="print a table for README")
    args = parser.parse_args()
    missing = missing_parts()
    if missing:
        print(f"cannot run the lab: {missing}", file=sys.stderr)
        return 2
    wanted = args.servers.split(",")
    rows = []
    for case in CASES:
        for server in (s for s in case.servers if s in wanted):
            row = measure(case, server)
            rows.append(row)
            mark = "ok" if row["right"] and row["seconds"] <= LIMIT else "WRONG"  # type: ignore[operator]
            print(
                f"{mark:5} {row['seconds']:6.1f}s  {server:9} {case.name}: {row['verdict']}",
                flush=True,
            )
    if args.markdown:
        print(f"\nserver: {SERVER_ADDR}, every timeout at its default\n")
        print("| case | server | seconds | verdict |")
        print("|---|---|---:|---|")
        for row in rows:
            print(f"| {row['case']} | {row['server']} | {row['seconds']} | {row['verdict']} |")
    bad = [r for r in rows if not r["right"] or r["seconds"] > LIMIT]  # type: ignore[operator]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
