"""The words shown to the user: what failed, the evidence, and the exact change."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from backupagent.diagnosis.common import Diagnosis, ProbeResult, mode_name, passive_setting


def suggestion_text(
    diagnosis: Diagnosis,
    job: str,
    destination: str,
    config_path: Path,
    probe: ProbeResult | None,
    mode_table: str | None = None,
    files: Mapping[str, Path] | None = None,
) -> str:
    """The plain-words suggestion: what failed, the evidence, and the exact change to make.
    `mode_table` is where `passive` goes (default: the job's table); `files` names the
    tables that live in an included file rather than `config_path`."""

    def file_of(table: str) -> Path:
        return (files or {}).get(table, config_path)

    lines = [f"Job '{job}': {diagnosis.what}."]
    lines += ["Evidence:"] + [f"  {fact}" for fact in diagnosis.evidence if fact]
    if diagnosis.flips_mode:
        target = diagnosis.passive_should_be
        other = mode_name(bool(target))
        if probe is not None and not probe.ok:
            lines.append(
                f"Checked: a directory listing in {other} mode failed too from this host "
                f"({probe.detail}), so neither mode works and flipping `passive` alone will "
                "not help. A firewall blocks the data connection: ask the server's admin "
                "for its passive port range (vsftpd: pasv_min_port/pasv_max_port) and allow "
                "outbound connections to it from this host, or allow the server to connect "
                "back to this host for active mode."
            )
            if probe.ssh_too:
                lines.append(
                    "Or avoid FTP's data connection altogether: this server also answers SSH "
                    f'on port 22, so a [destinations.{destination}] with type = "sftp" (same '
                    "host, user and directory, its host_key pinned) needs no data connection."
                )
            return "\n".join(lines)
        if probe is not None:
            lines.append(f"Verified: a directory listing in {other} mode worked from this host.")
        table = mode_table or f"jobs.{job}"
        lines.append(
            f"Change: in {file_of(table)}, under [{table}], set {passive_setting(bool(target))}"
        )
    else:
        lines.append(f"Advice: {diagnosis.advice}")
        if diagnosis.keys:
            keys = ", ".join(diagnosis.keys)
            table = f"destinations.{destination}" if diagnosis.table is None else diagnosis.table
            under = f", under [{table}]" if table else ""
            lines.append(f"Where: in {diagnosis.file or file_of(table)}{under}: {keys}")
    return "\n".join(lines)
