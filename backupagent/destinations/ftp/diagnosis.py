"""What a failed FTP dialogue means: pure rules over the recorded dialogue.

`diagnose` classifies a `Failure` (the dialogue plus what went wrong) into a
`Diagnosis` with the first rule of FTP_RULES that applies; `is_transient` says whether
the same operation is worth trying again. The I/O that records the dialogue lives in
destinations/ftp.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from backupagent.destinations.ftp import replies
from backupagent.destinations.ftp.replies import Reply
from backupagent.diagnosis.common import (
    NOT_A_MODE_PROBLEM,
    Category,
    Diagnosis,
    mode_name,
)


class FailureKind(StrEnum):
    """Where the failure surfaced."""

    REPLY = "reply"  # the server answered a command with an error code
    DATA_CONNECT = "data_connect"  # opening the data connection failed (timeout, refused)
    DATA_TRANSFER = "data_transfer"  # the data connection broke or stalled mid-transfer
    CONTROL_CONNECT = "control_connect"  # could not reach the server at all
    CONTROL_LOST = "control_lost"  # the control connection dropped or timed out later
    TLS = "tls"  # TLS handshake or certificate failure
    NO_PROGRESS = "no_progress"  # a resumed upload stopped again where the last one did
    PROTOCOL = "protocol"  # a reply that breaks FTP (unparsable, over a bound)
    OTHER = "other"


@dataclass(frozen=True)
class Line:
    """One line of the FTP dialogue as logged: a client command or a server reply."""

    direction: str  # "command" or "reply"
    text: str  # PASS already masked

    @property
    def code(self) -> int | None:
        return replies.code_of(self.text) if self.direction == "reply" else None

    @property
    def verb(self) -> str:
        return self.text.split(" ", 1)[0].upper() if self.direction == "command" else ""

    def __str__(self) -> str:
        who = "client command" if self.direction == "command" else "server reply"
        return f"FTP {who}: {self.text}"


@dataclass(frozen=True)
class Certificate:
    """What a server's TLS certificate says, read without trusting it."""

    subject: str
    issuer: str
    not_after: str
    fingerprint: str  # SHA-256 of the DER, 64 hex digits: what tls_fingerprint takes


@dataclass(frozen=True)
class Failure:
    """Everything known about a failed FTP operation, as plain data."""

    kind: FailureKind
    passive: bool
    dialogue: tuple[Line, ...]
    error: str = ""  # the exception text, e.g. "timed out after 5s"
    address: str | None = None  # host:port that could not be reached, if any
    stored: int | None = None  # NO_PROGRESS: bytes of the upload the server holds
    size: int | None = None  # NO_PROGRESS: bytes of the whole upload
    certificate: Certificate | None = None  # TLS: the certificate the server presented
    closed_by_server: bool = False  # DATA_TRANSFER: reset or closed by the peer, not a stall


PASSIVE_VERBS = {"PASV", "EPSV"}
ACTIVE_VERBS = {"PORT", "EPRT"}
LOGIN_VERBS = {"USER", "PASS", "ACCT"}
TLS_VERBS = {"AUTH", "PBSZ", "PROT"}


def _last_exchange(dialogue: tuple[Line, ...]) -> tuple[Line | None, Line | None]:
    """The last command sent and the last reply received after it (if any)."""
    command = reply = None
    for line in reversed(dialogue):
        if line.direction == "reply" and reply is None and command is None:
            reply = line
        elif line.direction == "command":
            command = line
            break
    return command, reply


def _data_setup(dialogue: tuple[Line, ...]) -> tuple[Line, ...]:
    """The most recent PASV/EPSV/PORT/EPRT command and its reply, as evidence."""
    for i in range(len(dialogue) - 1, -1, -1):
        line = dialogue[i]
        if line.verb in PASSIVE_VERBS | ACTIVE_VERBS:
            following = dialogue[i + 1 : i + 2]
            return (line, *[r for r in following if r.direction == "reply"])
    return ()


@dataclass(frozen=True)
class Facts:
    """What the rules look at: the failure and its last exchange, read once."""

    failure: Failure
    command: Line | None
    reply: Line | None

    @classmethod
    def of(cls, failure: Failure) -> Facts:
        return cls(failure, *_last_exchange(failure.dialogue))

    @property
    def kind(self) -> FailureKind:
        return self.failure.kind

    @property
    def code(self) -> int | None:
        return self.reply.code if self.reply else None

    @property
    def verb(self) -> str:
        return self.command.verb if self.command else ""

    @property
    def exchange(self) -> tuple[str, ...]:
        return tuple(str(x) for x in (self.command, self.reply) if x is not None)

    @property
    def setup(self) -> tuple[str, ...]:
        return tuple(str(x) for x in _data_setup(self.failure.dialogue))

    @property
    def mode(self) -> str:
        return mode_name(self.failure.passive)

    @property
    def oops(self) -> bool:
        return self.reply is not None and replies.is_oops(self.reply.text)

    @property
    def reason(self) -> str:
        """The error text, else the server's reply."""
        return self.failure.error or (self.reply.text if self.reply else "")


@dataclass(frozen=True)
class Rule:
    """One line of the classification: when it applies, and what it concludes."""

    name: str
    applies: Callable[[Facts], bool]
    conclude: Callable[[Facts], Diagnosis]


NO_GREETING = "connected, but the server sent no greeting"  # the start of such an error


def _host(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.HOST,
        f"could not connect to the FTP server at {f.failure.address}: {f.failure.error}",
        (f"connecting to {f.failure.address}: {f.failure.error}",),
        "Check `host` and `port` of the destination, that the server is running, and "
        "that this host may reach it (DNS, firewall).",
        keys=("host", "port"),
    )


def _no_greeting(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.HOST,
        f"the FTP server at {f.failure.address} accepted the connection but sent no greeting",
        (f"connecting to {f.failure.address}: {f.failure.error}",),
        "Something listens on that port but sent no FTP greeting. If this destination "
        "never worked, check `port` (990 is usually implicit FTPS: set "
        'tls = "implicit"; explicit FTPS uses 21); if it did, the server is overloaded '
        "or hung: tell its admin. " + NOT_A_MODE_PROBLEM,
        keys=("port", "tls"),
    )


def _certificate(f: Facts) -> Diagnosis:
    cert = f.failure.certificate
    assert cert is not None
    return Diagnosis(
        Category.TLS,
        f"the server's TLS certificate was not accepted: {f.failure.error}",
        (
            f"certificate subject: {cert.subject}",
            f"issuer: {cert.issuer}",
            f"valid until: {cert.not_after}",
            f"SHA-256 fingerprint: {cert.fingerprint}",
        ),
        "If this is your server's certificate (self-signed or from a private CA), either "
        "give the CA's certificate as `tls_ca_file`, or pin this very certificate with "
        f'tls_fingerprint = "{cert.fingerprint}" '
        "(check the fingerprint with the server's admin first: pinning an attacker's "
        "certificate hands them the password). " + NOT_A_MODE_PROBLEM,
        keys=("tls_ca_file", "tls_fingerprint"),
    )


def _tls(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.TLS,
        f"the TLS negotiation failed: {f.reason}",
        f.exchange or (f.failure.error,),
        'Check the destination\'s `tls` setting ("none", "explicit" or "implicit") '
        "against what the server offers, and the server's certificate.",
        keys=("tls", "port"),
    )


# how servers say "log in over TLS": vsftpd 530 "Non-anonymous sessions must use
# encryption.", ProFTPD 550 "SSL/TLS required on the control channel", Pure-FTPd 421
# "Sorry, cleartext sessions and weak ciphers are not accepted on this server."
TLS_REQUIRED = re.compile(r"\b(TLS|SSL|encrypt\w*|cleartext)\b", re.IGNORECASE)


def _tls_required(f: Facts) -> Diagnosis:
    unsent = " The password was not sent in clear." if f.verb == "USER" else ""
    return Diagnosis(
        Category.TLS,
        'the server accepts logins only over TLS (FTPS), and this destination has tls = "none"',
        f.exchange,
        'Set tls = "explicit" (AUTH TLS on port 21; or "implicit" if the host says port '
        "990), and give tls_ca_file or tls_fingerprint if its certificate is not from a "
        f"public CA.{unsent} " + NOT_A_MODE_PROBLEM,
        keys=("tls",),
    )


def _server_error(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.SERVER_ERROR,
        "the FTP server reported an internal error on every attempt",
        f.exchange,
        "This is for the server's admin to fix: show them the reply above (vsftpd says "
        "OOPS when its own configuration or session process fails). Nothing in jobs.toml "
        "changes it. " + NOT_A_MODE_PROBLEM,
    )


def _protocol(f: Facts) -> Diagnosis:
    to_epsv = f.verb == "EPSV"
    return Diagnosis(
        Category.PROTOCOL,
        f"the server sent a reply that breaks the FTP protocol: {f.failure.error}",
        f.exchange or (f.failure.error,),
        "The server, or a proxy or firewall that rewrites FTP between it and this host, "
        "answers in a way no client can rely on: show the reply above to the server's "
        "admin. "
        + ("Meanwhile set epsv = false to use PASV instead. " if to_epsv else "")
        + NOT_A_MODE_PROBLEM,
        keys=("epsv",) if to_epsv else (),
    )


def _login(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.LOGIN,
        "the server refused the login",
        f.exchange,
        "Check `user` and the password (`password_file`, `password_env` or `password`) "
        "of the destination. " + NOT_A_MODE_PROBLEM,
        keys=("user", "password_file", "password_env", "password"),
    )


def _passive_refused(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.PASSIVE_UNSUPPORTED,
        f"the server does not support passive mode ({f.verb} was refused)",
        f.exchange,
        "Use active mode.",
        passive_should_be=False,
    )


def _active_refused(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.ACTIVE_DATA,
        f"the server refused active mode ({f.verb} was rejected)",
        f.exchange,
        "Use passive mode.",
        passive_should_be=True,
    )


def _data_connection(f: Facts) -> Diagnosis:
    failure = f.failure
    facts = f.setup + f.exchange if failure.kind is not FailureKind.DATA_CONNECT else f.setup
    if failure.kind is FailureKind.DATA_CONNECT and f.command is not None:
        facts = (*facts, str(f.command), *((str(f.reply),) if f.reply else ()))
    if failure.address:
        facts = (*facts, f"data connection to {failure.address}: {failure.error}")
    elif failure.error and failure.kind is FailureKind.DATA_CONNECT:
        facts = (*facts, f"data connection: {failure.error}")
    if failure.passive:
        what = (
            "the data connection in passive mode failed: this host could not connect to "
            "the address and port the server gave in its passive reply"
        )
    else:
        what = (
            "the data connection in active mode failed: the server could not connect "
            "back to this host on the port given in PORT/EPRT"
        )
    return Diagnosis(
        Category.PASSIVE_DATA if failure.passive else Category.ACTIVE_DATA,
        what,
        tuple(dict.fromkeys(facts)),
        f"Use {mode_name(not failure.passive)} mode.",
        passive_should_be=not failure.passive,
    )


NO_SPACE_ADVICE = (
    "Free space on the server or ask the host to raise the quota, or lower `keep` so "
    "fewer backups are kept. " + NOT_A_MODE_PROBLEM
)


def _stopped_accepting(f: Facts) -> Diagnosis:
    failure = f.failure
    return Diagnosis(
        Category.NO_SPACE,
        "the server's disk or your quota is full: it stopped accepting the upload at the "
        "same point twice",
        (
            f"the server holds {failure.stored} of {failure.size} bytes and took none "
            "more on a resumed attempt",
            failure.error,
            *f.exchange,
        ),
        NO_SPACE_ADVICE,
        keys=("keep",),
    )


def _no_space(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.NO_SPACE,
        "the server's disk or your quota is full",
        f.exchange,
        NO_SPACE_ADVICE,
        keys=("keep",),
    )


def _path(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.PATH,
        "the server refused a file or directory operation (missing path or no permission)",
        f.exchange,
        "Check the destination's `directory` exists or can be created, and that the FTP "
        "user may write, rename and delete files there. " + NOT_A_MODE_PROBLEM,
        keys=("directory", "user"),
    )


def _data_broken(f: Facts) -> Diagnosis:
    error = f.failure.error
    return Diagnosis(
        Category.DATA_BROKEN,
        f"the data connection broke during the transfer ({f.mode} mode): {f.reason}",
        (*f.setup, *f.exchange, *((error,) if error else ())),
        "The connection was established, so the mode works; the network or the server "
        "dropped it midway. Run the job again; if it recurs, raise `timeout` and check "
        "the server's idle and transfer limits.",
        keys=("timeout",),
    )


def _control_lost(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.CONTROL_LOST,
        f"the control connection to the server was lost: {f.failure.error}",
        (*f.exchange, f.failure.error),
        "Run the job again; if it recurs, check the server's idle timeout and any NAT or "
        "firewall between this host and the server.",
    )


def _unknown(f: Facts) -> Diagnosis:
    return Diagnosis(
        Category.UNKNOWN,
        f"the FTP transfer failed: {f.reason or 'unknown error'}",
        f.exchange or (f.failure.error,),
        "See the debug log for the whole dialogue.",
    )


def _is_tls(f: Facts) -> bool:
    return (
        f.kind is FailureKind.TLS
        or f.code in replies.TLS_FAILURES
        or (f.verb in TLS_VERBS and f.code is not None and f.code >= 500)
    )


# In order: the first rule that applies gives the diagnosis. A mode flip is concluded
# only by rules about the data connection.
FTP_RULES: tuple[Rule, ...] = (
    Rule(
        "no greeting",
        lambda f: f.kind is FailureKind.CONTROL_CONNECT and f.failure.error.startswith(NO_GREETING),
        _no_greeting,
    ),
    Rule("control connection", lambda f: f.kind is FailureKind.CONTROL_CONNECT, _host),
    Rule(
        "certificate refused",
        lambda f: f.kind is FailureKind.TLS and f.failure.certificate is not None,
        _certificate,
    ),
    Rule("tls", _is_tls, _tls),
    Rule(
        "server requires TLS",
        lambda f: (
            f.verb in ("USER", "PASS")
            and f.code is not None
            and f.code >= 400
            and f.reply is not None
            and bool(TLS_REQUIRED.search(f.reply.text))
        ),
        _tls_required,
    ),
    Rule("protocol error", lambda f: f.kind is FailureKind.PROTOCOL, _protocol),
    Rule(
        "server internal error",
        lambda f: f.kind is FailureKind.REPLY and f.oops,
        _server_error,
    ),
    Rule(
        "login",
        lambda f: (
            f.code == Reply.NOT_LOGGED_IN
            or (f.verb in LOGIN_VERBS and f.code is not None and f.code >= 400)
        ),
        _login,
    ),
    Rule(
        "passive refused",
        lambda f: f.verb in PASSIVE_VERBS and f.code in replies.UNSUPPORTED_HERE,
        _passive_refused,
    ),
    Rule(
        "active refused",
        lambda f: f.verb in ACTIVE_VERBS and f.code is not None and f.code >= 500,
        _active_refused,
    ),
    Rule(
        "data connection",
        lambda f: f.kind is FailureKind.DATA_CONNECT or f.code == Reply.CANT_OPEN_DATA,
        _data_connection,
    ),
    Rule("stopped accepting", lambda f: f.kind is FailureKind.NO_PROGRESS, _stopped_accepting),
    Rule(
        "no space",
        lambda f: f.code in (Reply.INSUFFICIENT_STORAGE, Reply.STORAGE_EXCEEDED),
        _no_space,
    ),
    Rule(
        "path or permission",
        lambda f: f.code in (Reply.FILE_UNAVAILABLE, Reply.NAME_NOT_ALLOWED),
        _path,
    ),
    Rule(
        "data transfer broken",
        lambda f: f.kind is FailureKind.DATA_TRANSFER or f.code == Reply.TRANSFER_ABORTED,
        _data_broken,
    ),
    Rule("control connection lost", lambda f: f.kind is FailureKind.CONTROL_LOST, _control_lost),
    Rule("anything else", lambda f: True, _unknown),
)


def matching_rule(failure: Failure) -> Rule:
    """The first rule of FTP_RULES that applies to `failure`."""
    facts = Facts.of(failure)
    return next(rule for rule in FTP_RULES if rule.applies(facts))


def diagnose(failure: Failure) -> Diagnosis:
    """Classify a failure; a mode flip is suggested only when the data connection is at fault."""
    return matching_rule(failure).conclude(Facts.of(failure))


def is_transient(failure: Failure) -> bool:
    """Worth retrying the same way: the server or network hiccupped, nothing is misconfigured.

    A data connection that cannot be opened is not transient (it is a mode or firewall
    problem, for `fallback` and the suggestion); neither are permanent replies
    (530, 550, 552, 553), TLS failures, nor an upload the server stopped accepting twice.
    vsftpd's `500 OOPS` is: its session died (a restart), a new one may work.
    """
    if failure.kind is FailureKind.REPLY:
        facts = Facts.of(failure)
        return facts.code in replies.TRANSIENT or facts.oops
    if failure.kind is FailureKind.CONTROL_CONNECT:
        return not failure.error.startswith("name lookup failed")
    return failure.kind in (FailureKind.DATA_TRANSFER, FailureKind.CONTROL_LOST)
