"""The suite's jobs.toml: one job `www` sending to a test FTP server, and what a run
said and published there."""

from __future__ import annotations

import subprocess
from pathlib import Path

from backupagent.ftpserver import LocalFtpServer

from ..actions.test_backup import REMOTE
from ..helpers import agent_table, ftp_table


def ftp_jobs_toml(
    tmp_path: Path,
    server: LocalFtpServer,
    job: str | None,
    *,
    spool: Path | None = None,
    agent: str = "",
    tables: str = "",
) -> Path:
    """jobs.toml in `tmp_path`: state, logs and (unless given) the spool below it, and
    `agent`'s lines; destination `test` on `server`; `[jobs.www]` sending there with
    `job`'s keys (none when None); then `tables`."""
    password = tmp_path / "ftp.pass"
    password.write_text(server.password + "\n")
    www = "" if job is None else f'[jobs.www]\ndestination = "test"\n{job}\n'
    path = tmp_path / "jobs.toml"
    path.write_text(
        agent_table(tmp_path, agent, spool)
        + ftp_table("test", server, password, f'directory = "/{REMOTE}"')
        + f"{www}\n{tables}\n"
    )
    return path


def said(result: subprocess.CompletedProcess[str]) -> str:
    """All a command printed."""
    return result.stdout + result.stderr


def published(server: LocalFtpServer) -> list[str]:
    """The manifests of the backups the job published on `server`."""
    where = server.root / REMOTE
    return sorted(p.name for p in where.glob("*.manifest.json")) if where.exists() else []
