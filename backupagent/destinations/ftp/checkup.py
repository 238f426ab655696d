"""`backupagent diagnose JOB`: test the destination step by step, in every mode.

Resolve, connect (banner, TLS details), log in, read FEAT, then in each of EPSV,
PASV and active mode: list the job's directory, upload a small file, check its size
and delete it. `recommend` (pure) turns the results into the jobs.toml settings to use.
"""

from __future__ import annotations

import ftplib
import io
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from backupagent.config import Config, FtpDestination
from backupagent.destinations.ftp import replies
from backupagent.destinations.ftp.diagnosis import Certificate, FailureKind
from backupagent.destinations.ftp.dialogue import TRANSFER_ERRORS
from backupagent.destinations.ftp.session import FtpSession
from backupagent.diagnosis.common import passive_setting

Mode = Literal["EPSV", "PASV", "active"]
MODES: tuple[Mode, ...] = ("EPSV", "PASV", "active")
PROBE_BYTES = b"backupagent diagnose: this file is deleted right away\n" * 64


@dataclass
class Outcome:
    """One step or one mode: did it work, how long it took, the reply or error."""

    name: str
    ok: bool
    seconds: float
    detail: str
    refused: bool = False  # the server rejected the mode's command itself (500/502)


@dataclass
class Report:
    job: str
    steps: list[Outcome] = field(default_factory=list)
    modes: dict[str, Outcome] = field(default_factory=dict)
    banner: str = ""
    tls: dict[str, Any] = field(default_factory=dict)
    certificate: Certificate | None = None  # shown when verification failed or is pinned
    certificate_refused: bool = False
    features: list[str] = field(default_factory=list)
    configured_works: bool = False
    changes: list[tuple[str, str]] = field(default_factory=list)  # ("job"|"destination", setting)


def configured_mode(passive: bool, epsv: bool | str) -> str:
    if not passive:
        return "active"
    if epsv is True:
        return "EPSV"
    if epsv is False:
        return "PASV"
    return "EPSV (PASV if the server refuses EPSV)"


def recommend(
    modes: dict[str, Outcome], passive: bool, epsv: bool | str
) -> tuple[bool, list[tuple[str, str]]]:
    """Whether the configured mode works, and the settings to change if it does not.

    epsv = "auto" falls back to PASV only when the server refuses EPSV (500/502),
    not when an EPSV data connection fails.
    """

    def works(mode: str) -> bool:
        return mode in modes and modes[mode].ok

    if not passive:
        configured = works("active")
    elif epsv is True:
        configured = works("EPSV")
    elif epsv is False:
        configured = works("PASV")
    else:
        configured = works("EPSV") or (
            modes.get("EPSV", Outcome("", False, 0, "")).refused and works("PASV")
        )
    if configured:
        return True, []
    if works("EPSV"):
        changes = [("job", passive_setting(True))]
        return False, changes + ([("destination", 'epsv = "auto"')] if epsv is False else [])
    if works("PASV"):
        return False, [("job", passive_setting(True)), ("destination", "epsv = false")]
    if works("active"):
        return False, [("job", passive_setting(False))]
    return False, []


def _timed(name: str, action: Any) -> tuple[Outcome, Any]:
    started = time.monotonic()
    try:
        value = action()
    except TRANSFER_ERRORS as exc:
        return Outcome(name, False, time.monotonic() - started, _describe(exc)), None
    return Outcome(name, True, time.monotonic() - started, ""), value


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1]


def run_checkup(
    config: Config,
    job: str,
    name: str | None = None,
    on_step: Callable[[str], None] = lambda _text: None,
) -> Report:
    """Every step against the job's destination; every FTP line goes to the debug log.

    `on_step` hears each step as it starts, with how long it may take, so a mode that a
    firewall blocks is not a silent wait.
    """
    dest = config.destination_of(job, name)
    assert isinstance(dest, FtpDestination)
    passive = config.passive_for(job, name)
    report = Report(job)
    log = structlog.get_logger("backupagent.diagnose")
    on_step(f"resolving {dest.host}")
    outcome, addresses = _timed(
        "resolve",
        lambda: sorted(
            {
                a[4][0]
                for a in socket.getaddrinfo(dest.host, dest.effective_port, type=socket.SOCK_STREAM)
            }
        ),
    )
    outcome.detail = outcome.detail or ", ".join(addresses)
    report.steps.append(outcome)
    if not outcome.ok:
        return report
    session = FtpSession(dest, passive)
    started = time.monotonic()
    on_step(f"connecting and logging in (up to {dest.connect_timeout + dest.timeout:g}s)")
    try:
        session.open()
        report.banner = session.ftp.welcome or ""
        report.tls = session.tls_info()
        report.certificate = session.certificate_info() if dest.tls_fingerprint else None
        report.features = sorted(session.features())
        detail = report.banner.splitlines()[-1] if report.banner else ""
        report.steps.append(Outcome("connect and log in", True, time.monotonic() - started, detail))
    except TRANSFER_ERRORS as exc:
        failure = session.failure(exc)
        last = failure.dialogue[-1].text if failure.dialogue else ""
        detail = failure.error if failure.kind is not FailureKind.REPLY else last
        report.steps.append(
            Outcome("connect and log in", False, time.monotonic() - started, detail)
        )
        report.certificate = failure.certificate
        report.certificate_refused = failure.certificate is not None
        return report
    finally:
        session.close()
    # a blocked mode waits out connect_timeout (passive) or timeout (active), once
    # for the listing and not again: the upload is not tried after a failed listing
    waits = {"EPSV": dest.connect_timeout, "PASV": dest.connect_timeout, "active": dest.timeout}
    for mode in MODES:
        on_step(
            f"trying {mode}: list, upload, size, delete (a blocked mode takes {waits[mode]:g}s)"
        )
        report.modes[mode] = _try_mode(dest, mode)
        log.info(
            "mode tried", tried=mode, ok=report.modes[mode].ok, detail=report.modes[mode].detail
        )
    epsv = dest.epsv
    report.configured_works, report.changes = recommend(report.modes, passive, epsv)
    return report


def _try_mode(dest: FtpDestination, mode: Mode) -> Outcome:
    """List, upload, SIZE and delete a small file in the job's directory, in one mode."""
    settings = dest.model_copy(update={"epsv": mode == "EPSV", "retries": 0})
    session = FtpSession(settings, mode != "active")
    name = f".backupagent-diagnose-{secrets.token_hex(4)}"
    started = time.monotonic()
    try:
        session.open()
        session.change_directory(dest.directory)
        entries = session.listing()
        session.upload(io.BytesIO(PROBE_BYTES), name)
        size = session.size(name)
        session.delete(name)
        if size != len(PROBE_BYTES):
            raise ftplib.error_reply(f"SIZE says {size}, {len(PROBE_BYTES)} bytes were sent")
        detail = f"listed {len(entries)} entries, uploaded, sized and deleted a test file"
        return Outcome(mode, True, time.monotonic() - started, detail)
    except TRANSFER_ERRORS as exc:
        failure = session.failure(exc)
        last = failure.dialogue[-1] if failure.dialogue else None
        refused = bool(
            last is not None
            and last.code in replies.UNSUPPORTED
            and len(failure.dialogue) >= 2
            and failure.dialogue[-2].verb in ("EPSV", "PASV", "PORT", "EPRT")
        )
        detail = failure.error if failure.kind.value != "reply" else (last.text if last else "")
        if failure.address:
            detail = f"{failure.address}: {detail}"
        with_cleanup = _cleanup(session, name)
        return Outcome(mode, False, time.monotonic() - started, detail + with_cleanup, refused)
    finally:
        session.close()


def _cleanup(session: FtpSession, name: str) -> str:
    try:
        if session.size_or_none(name) is not None:
            session.delete(name)
    except TRANSFER_ERRORS:
        return f" (could not remove the test file {name})"
    return ""
