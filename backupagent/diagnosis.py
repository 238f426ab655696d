"""What a failed FTP dialogue means, and what the user should change.

Pure functions over plain data: `diagnose` classifies a `Failure` (the recorded
dialogue plus what went wrong) into a `Diagnosis`; `suggestion_text` turns that,
and the result of probing the other mode, into the words shown to the user.
The I/O that gathers the dialogue and runs the probe lives in destinations/ftp.py
and runner.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class FailureKind(StrEnum):
    """Where the failure surfaced."""

    REPLY = "reply"  # the server answered a command with an error code
    DATA_CONNECT = "data_connect"  # opening the data connection failed (timeout, refused)
    DATA_TRANSFER = "data_transfer"  # the data connection broke or stalled mid-transfer
    CONTROL_CONNECT = "control_connect"  # could not reach the server at all
    CONTROL_LOST = "control_lost"  # the control connection dropped or timed out later
    TLS = "tls"  # TLS handshake or certificate failure
    OTHER = "other"


class Category(StrEnum):
    PASSIVE_DATA = "passive_data_connection"
    ACTIVE_DATA = "active_data_connection"
    PASSIVE_UNSUPPORTED = "passive_not_supported"
    LOGIN = "login"
    PATH = "path_or_permission"
    NO_SPACE = "server_out_of_space"
    HOST = "host_unreachable"
    TLS = "tls"
    DATA_BROKEN = "data_transfer_broken"
    CONTROL_LOST = "control_connection_lost"
    UNKNOWN = "unknown"
    DB_LOGIN = "database_login"
    DB_UNKNOWN = "database_unknown"
    DB_UNREACHABLE = "database_unreachable"
    DB_TOOL_MISSING = "dump_tool_missing"
    DB_INCOMPLETE = "dump_incomplete"
    DB_FAILED = "dump_failed"
    WORDPRESS_CONFIG = "wordpress_config"


@dataclass(frozen=True)
class Line:
    """One line of the FTP dialogue as logged: a client command or a server reply."""

    direction: str  # "command" or "reply"
    text: str  # PASS already masked

    @property
    def code(self) -> int | None:
        head = self.text[:3]
        return int(head) if self.direction == "reply" and head.isdigit() else None

    @property
    def verb(self) -> str:
        return self.text.split(" ", 1)[0].upper() if self.direction == "command" else ""

    def __str__(self) -> str:
        who = "client command" if self.direction == "command" else "server reply"
        return f"FTP {who}: {self.text}"


@dataclass(frozen=True)
class Failure:
    """Everything known about a failed FTP operation, as plain data."""

    kind: FailureKind
    passive: bool
    dialogue: tuple[Line, ...]
    error: str = ""  # the exception text, e.g. "timed out after 5s"
    address: str | None = None  # host:port that could not be reached, if any


@dataclass(frozen=True)
class Diagnosis:
    category: Category
    what: str  # what failed, in plain words
    evidence: tuple[str, ...]  # log lines or facts that show it
    advice: str  # what to do when no mode flip fixes it
    passive_should_be: bool | None = None  # the passive value to suggest, if a flip helps
    keys: tuple[str, ...] = ()  # the jobs.toml keys to look at
    table: str | None = None  # where those keys are; None: the job's destination table
    file: Path | None = None  # the file holding them; None: jobs.toml

    @property
    def flips_mode(self) -> bool:
        return self.passive_should_be is not None


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of a tiny listing transfer tried in one mode."""

    passive: bool
    ok: bool
    detail: str


PASSIVE_VERBS = {"PASV", "EPSV"}
ACTIVE_VERBS = {"PORT", "EPRT"}
LOGIN_VERBS = {"USER", "PASS", "ACCT"}


def mode_name(passive: bool) -> str:
    return "passive" if passive else "active"


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


def diagnose(failure: Failure) -> Diagnosis:
    """Classify a failure; a mode flip is suggested only when the data connection is at fault."""
    command, reply = _last_exchange(failure.dialogue)
    code = reply.code if reply else None
    verb = command.verb if command else ""
    exchange = tuple(str(x) for x in (command, reply) if x is not None)
    mode = mode_name(failure.passive)
    setup = tuple(str(x) for x in _data_setup(failure.dialogue))

    if failure.kind is FailureKind.CONTROL_CONNECT:
        return Diagnosis(
            Category.HOST,
            f"could not connect to the FTP server at {failure.address}: {failure.error}",
            (f"connecting to {failure.address}: {failure.error}",),
            "Check `host` and `port` of the destination, that the server is running, and "
            "that this host may reach it (DNS, firewall).",
            keys=("host", "port"),
        )
    if (
        failure.kind is FailureKind.TLS
        or code in (522, 534)
        or (verb in ("AUTH", "PBSZ", "PROT") and code is not None and code >= 500)
    ):
        return Diagnosis(
            Category.TLS,
            f"the TLS negotiation failed: {failure.error or (reply.text if reply else '')}",
            exchange or (failure.error,),
            'Check the destination\'s `tls` setting ("none", "explicit" or "implicit") '
            "against what the server offers, and the server's certificate.",
            keys=("tls", "port"),
        )
    if code == 530 or (verb in LOGIN_VERBS and code is not None and code >= 400):
        return Diagnosis(
            Category.LOGIN,
            "the server refused the login",
            exchange,
            "Check `user` and the password (`password_file`, `password_env` or `password`) "
            "of the destination. This is not a passive/active mode problem.",
            keys=("user", "password_file", "password_env", "password"),
        )
    if verb in PASSIVE_VERBS and code in (500, 502, 504):
        return Diagnosis(
            Category.PASSIVE_UNSUPPORTED,
            f"the server does not support passive mode ({verb} was refused)",
            exchange,
            "Use active mode.",
            passive_should_be=False,
        )
    if verb in ACTIVE_VERBS and code is not None and code >= 500:
        return Diagnosis(
            Category.ACTIVE_DATA,
            f"the server refused active mode ({verb} was rejected)",
            exchange,
            "Use passive mode.",
            passive_should_be=True,
        )
    if failure.kind is FailureKind.DATA_CONNECT or code == 425:
        facts = setup + exchange if failure.kind is FailureKind.REPLY else setup
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
    if code in (452, 552):
        return Diagnosis(
            Category.NO_SPACE,
            "the FTP server has no space left (or the account's quota is full)",
            exchange,
            "Free space on the server or raise the quota, or lower `keep` so fewer backups "
            "are kept. This is not a passive/active mode problem.",
            keys=("keep",),
        )
    if code in (550, 553):
        return Diagnosis(
            Category.PATH,
            "the server refused a file or directory operation (missing path or no permission)",
            exchange,
            "Check the destination's `directory` exists or can be created, and that the FTP "
            "user may write, rename and delete files there. This is not a passive/active "
            "mode problem.",
            keys=("directory", "user"),
        )
    if failure.kind is FailureKind.DATA_TRANSFER or code == 426:
        return Diagnosis(
            Category.DATA_BROKEN,
            f"the data connection broke during the transfer ({mode} mode): "
            f"{failure.error or (reply.text if reply else '')}",
            (*setup, *exchange, *((failure.error,) if failure.error else ())),
            "The connection was established, so the mode works; the network or the server "
            "dropped it midway. Run the job again; if it recurs, raise `timeout` and check "
            "the server's idle and transfer limits.",
            keys=("timeout",),
        )
    if failure.kind is FailureKind.CONTROL_LOST:
        return Diagnosis(
            Category.CONTROL_LOST,
            f"the control connection to the server was lost: {failure.error}",
            (*exchange, failure.error),
            "Run the job again; if it recurs, check the server's idle timeout and any NAT or "
            "firewall between this host and the server.",
        )
    return Diagnosis(
        Category.UNKNOWN,
        f"the FTP transfer failed: {failure.error or (reply.text if reply else 'unknown error')}",
        exchange or (failure.error,),
        "See the debug log for the whole dialogue.",
    )


TRANSIENT_CODES = {421, 426, 450, 451}


def is_transient(failure: Failure) -> bool:
    """Worth retrying the same way: the server or network hiccupped, nothing is misconfigured.

    A data connection that cannot be opened is not transient (it is a mode or firewall
    problem, for `fallback` and the suggestion); neither are permanent replies
    (530, 550, 552, 553) nor TLS failures.
    """
    if failure.kind is FailureKind.REPLY:
        _, reply = _last_exchange(failure.dialogue)
        return reply is not None and reply.code in TRANSIENT_CODES
    if failure.kind is FailureKind.CONTROL_CONNECT:
        return not failure.error.startswith("name lookup failed")
    return failure.kind in (FailureKind.DATA_TRANSFER, FailureKind.CONTROL_LOST)


def suggestion_text(
    diagnosis: Diagnosis,
    job: str,
    destination: str,
    config_path: Path,
    probe: ProbeResult | None,
) -> str:
    """The plain-words suggestion: what failed, the evidence, and the exact change to make."""
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
            return "\n".join(lines)
        if probe is not None:
            lines.append(f"Verified: a directory listing in {other} mode worked from this host.")
        lines.append(
            f"Change: in {config_path}, under [jobs.{job}], set "
            f"passive = {'true' if target else 'false'}"
        )
    else:
        lines.append(f"Advice: {diagnosis.advice}")
        if diagnosis.keys:
            keys = ", ".join(diagnosis.keys)
            table = f"destinations.{destination}" if diagnosis.table is None else diagnosis.table
            under = f", under [{table}]" if table else ""
            lines.append(f"Where: in {diagnosis.file or config_path}{under}: {keys}")
    return "\n".join(lines)


@dataclass(frozen=True)
class DumpFailure:
    """A database dump that failed, as plain data."""

    engine: str  # "mysql" | "postgresql" | "sqlite"
    database: str
    tool: str  # the program run, or the names looked for when none was found
    returncode: int | None  # None: the tool could not be started at all
    stderr: str
    complete: bool = True  # the dump ended with its completion marker
    keys: tuple[tuple[str, str], ...] = ()  # role ("user", "password", "name", "host") -> key
    table: str | None = None
    file: Path | None = None


DUMP_TOOL_PACKAGES = {"mysql": "mariadb-client", "postgresql": "postgresql-client"}

# (engine, pattern in the tool's stderr, category, what failed, roles of the keys to check)
DUMP_ERRORS: tuple[tuple[str, str, Category, str, tuple[str, ...]], ...] = (
    (
        "mysql",
        "access denied for user",
        Category.DB_LOGIN,
        "the database server refused the login",
        ("user", "password"),
    ),
    (
        "mysql",
        "unknown database",
        Category.DB_UNKNOWN,
        "the database does not exist on the server",
        ("name",),
    ),
    (
        "mysql",
        "can't connect",
        Category.DB_UNREACHABLE,
        "the database server could not be reached",
        ("host", "port", "socket"),
    ),
    (
        "mysql",
        "unknown server host",
        Category.DB_UNREACHABLE,
        "the database server's host name could not be resolved",
        ("host",),
    ),
    (
        "mysql",
        "lost connection",
        Category.DB_UNREACHABLE,
        "the connection to the database server was lost",
        ("host", "port", "socket"),
    ),
    (
        "postgresql",
        "password authentication failed",
        Category.DB_LOGIN,
        "the database server refused the login",
        ("user", "password"),
    ),
    (
        "postgresql",
        "no password supplied",
        Category.DB_LOGIN,
        "the database server asked for a password and none is configured",
        ("user", "password"),
    ),
    ("postgresql", 'role "', Category.DB_LOGIN, "the database user does not exist", ("user",)),
    (
        "postgresql",
        "does not exist",
        Category.DB_UNKNOWN,
        "the database does not exist on the server",
        ("name",),
    ),
    (
        "postgresql",
        "could not connect",
        Category.DB_UNREACHABLE,
        "the database server could not be reached",
        ("host", "port"),
    ),
    (
        "postgresql",
        "connection refused",
        Category.DB_UNREACHABLE,
        "the database server could not be reached",
        ("host", "port"),
    ),
    (
        "postgresql",
        "could not translate host name",
        Category.DB_UNREACHABLE,
        "the database server's host name could not be resolved",
        ("host",),
    ),
    (
        "postgresql",
        "server version mismatch",
        Category.DB_FAILED,
        "pg_dump is older than the server; install the postgresql-client matching the server",
        (),
    ),
)


def diagnose_dump(failure: DumpFailure) -> Diagnosis:
    """Classify a failed dump from the tool's own words; the advice names the keys to check."""
    roles = dict(failure.keys)

    def keys(*wanted: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(roles[r] for r in wanted if r in roles))

    label = f"the {failure.engine} dump of {failure.database!r}"
    tail = tuple(line for line in failure.stderr.strip().splitlines()[-5:] if line.strip())
    if failure.returncode is None:
        package = DUMP_TOOL_PACKAGES.get(failure.engine, "")
        return Diagnosis(
            Category.DB_TOOL_MISSING,
            f"{label} could not start: {failure.tool} is not installed",
            (f"not found on PATH: {failure.tool}",),
            f"Install it: apt-get install {package}" if package else "Install the dump tool.",
        )
    lowered = failure.stderr.lower()
    for engine, pattern, category, what, wanted in DUMP_ERRORS:
        if engine == failure.engine and pattern in lowered:
            return Diagnosis(
                category,
                f"{label} failed: {what}",
                tail,
                "Check these settings; this is not an FTP problem.",
                keys=keys(*wanted),
                table=failure.table,
                file=failure.file,
            )
    if failure.returncode != 0 or any("error" in line.lower() for line in tail):
        return Diagnosis(
            Category.DB_FAILED,
            f"{label} failed (exit code {failure.returncode})",
            tail or (f"{failure.tool} exited with {failure.returncode} and printed nothing",),
            "Read the tool's error above; run it by hand to see more.",
            keys=keys("name"),
            table=failure.table,
            file=failure.file,
        )
    return Diagnosis(
        Category.DB_INCOMPLETE,
        f"{label} is incomplete: it ended without its completion marker",
        tail or (f"{failure.tool} exited 0 but the dump does not end with its marker",),
        "The dump was cut short (a killed tool, a full disk, a server that went away). "
        "Run the job again; if it recurs, run the dump tool by hand.",
        table=failure.table,
        file=failure.file,
    )
