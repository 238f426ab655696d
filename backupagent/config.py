"""jobs.toml: pydantic models and the loader.

This module is the only place defaults live. Everything else receives validated
models and never looks up a key with a fallback of its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import hashlib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from backupagent.text import printable

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger
    from apscheduler.triggers.cron import CronTrigger

DEFAULT_CONFIG_PATH = Path("/etc/backupagent/jobs.toml")
CONFIG_ENV = "BACKUPAGENT_CONFIG"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_M = TypeVar("_M", bound="BaseModel")


@dataclass(frozen=True)
class Problem:
    """One problem with jobs.toml, or with what it names on this host: in which file,
    table (`jobs.nightly`; None for the file as a whole) and key, and what is wrong."""

    file: str
    message: str
    table: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        """`jobs.toml: [jobs.nightly] sources: /srv/www does not exist`; a name a tenant
        chose (a directory's) cannot drive the terminal: control characters are escaped."""
        parts = [f"{self.file}:"]
        if self.table:
            parts.append(f"[{self.table}]" if self.key else f"[{self.table}]:")
        if self.key:
            parts.append(f"{self.key}:")
        return printable(" ".join([*parts, self.message]), keep="")


class ConfigError(Exception):
    """jobs.toml is unreadable or invalid; `problems` holds every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def _must_be_absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"{str(path)!r} is not an absolute path")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_must_be_absolute)]


def _trusted_file(path: Path | None) -> Path | None:
    """A file the configuration names (a password, a key, a CA): it must exist and be
    one that only root can change (trust.file_problem), or a local user could swap the
    key the agent trusts or the password it sends."""
    from backupagent import trust

    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    why = trust.file_problem(path)
    if why is not None:
        raise ValueError(f"{path} {why}")
    return path


TrustedFile = Annotated[Path, AfterValidator(_trusted_file)]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_size(value: object) -> object:
    """`"64M"`, `"1G"`, `"512K"` or a plain number of bytes (powers of 1024)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
        if not match:
            raise ValueError(f"{value!r} is not a size (write e.g. 64M, 1G or 500K)")
        return int(match[1]) * _UNITS[match[2].upper()]
    return value


ByteSize = Annotated[StrictInt, BeforeValidator(_parse_size)]


class _Table(BaseModel):
    """A TOML table: unknown keys are errors, so a typo never disables a setting; a
    control character in a value (a newline in a directory would become a second FTP
    command) is refused, naming the key but never showing the value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_control_characters(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                items = value if isinstance(value, list) else [value]
                for i, item in enumerate(items):
                    bad = _control_character(item) if isinstance(item, str) else None
                    if bad is not None:
                        where = f"{key}[{i}]" if isinstance(value, list) else str(key)
                        raise ValueError(
                            f"{where}: contains a control character ({bad}); remove it"
                        )
        return data


def _control_character(text: str) -> str | None:
    """The first control character of `text`, escaped, or None."""
    for char in text:
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            return f"\\x{ord(char):02x}"
    return None


class _Credentials(_Table):
    """A table that may carry a password: inline, from a file, or from the environment."""

    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> _Credentials:
        given = [k for k in ("password", "password_file", "password_env") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"{given[1]}: give only one of {', '.join(given)}")
        if self.password_file is not None:
            try:
                self.password_file.read_text(encoding="utf-8")
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise ValueError(
                    f"password_file: cannot read {self.password_file}: {reason}"
                ) from None
            try:
                _trusted_file(self.password_file)
            except ValueError as exc:
                raise ValueError(f"password_file: {exc}") from None
        if self.password_env is not None and self.password_env not in os.environ:
            raise ValueError(f"password_env: environment variable {self.password_env} is not set")
        return self

    @property
    def password_key(self) -> str:
        """The key the password comes from, to name in advice."""
        for key in ("password_file", "password_env", "password"):
            if getattr(self, key):
                return key
        return "password_file"

    def read_password(self) -> str | None:
        """The password from whichever source is configured (None when there is none)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            lines = self.password_file.read_text(encoding="utf-8").splitlines()
            return lines[0] if lines else ""
        if self.password_env is not None:
            return os.environ.get(self.password_env, "")
        return None


class EmailSettings(_Credentials):
    """`[agent.email]` or `[jobs.NAME.email]`: who hears about which runs, and how."""

    to: list[str] = Field(min_length=1)
    sender: str | None = None  # default: backupagent@<host name>
    on: list[Literal["failure", "warning", "success"]] = ["failure", "warning"]
    smtp_host: str = "localhost"
    smtp_port: StrictInt | None = Field(default=None, ge=1, le=65535)  # 25, 587 or 465
    smtp_tls: Literal["none", "starttls", "implicit"] = "starttls"
    smtp_user: str | None = None  # with password_file / password_env / password
    smtp_ca_file: TrustedFile | None = None  # CA for a relay with a private certificate
    timeout: float = Field(default=30.0, gt=0, le=600)

    @property
    def port(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return {"none": 25, "starttls": 587, "implicit": 465}[self.smtp_tls]


class PingSettings(_Table):
    """`[jobs.NAME.ping]`: healthchecks.io-style pings at start, success and failure."""

    url: str | None = None  # base URL: pinged at URL/start, URL, and URL/fail
    on_start: str | None = None  # or separate URLs for each event
    on_success: str | None = None
    on_failure: str | None = None
    post_summary: StrictBool = False  # POST the run summary as JSON instead of a GET
    timeout: float = Field(default=10.0, gt=0, le=120)
    retries: StrictInt = Field(default=2, ge=0, le=10)

    def url_for(self, event: Literal["start", "success", "failure"]) -> str | None:
        explicit = {"start": self.on_start, "success": self.on_success, "failure": self.on_failure}
        if explicit[event]:
            return explicit[event]
        if self.url is None:
            return None
        base = self.url.rstrip("/")
        return {"start": f"{base}/start", "success": base, "failure": f"{base}/fail"}[event]


class AgentConfig(_Table):
    """The `[agent]` table: where the agent keeps state, logs and spooled archives."""

    state_dir: Path = Path("/var/lib/backupagent")
    log_dir: Path = Path("/var/log/backupagent")
    spool_dir: Path = Path("/var/tmp/backupagent")
    timezone: str | None = None  # for schedules; default: the host's
    keep_logs: StrictInt = Field(default=30, ge=1)  # run logs kept per job
    stop_timeout: float = Field(default=30.0, gt=0, le=3600)  # seconds to clean up on SIGTERM
    metrics_file: Path | None = None  # Prometheus textfile, rewritten after every run
    progress_interval: float = Field(default=30.0, gt=0)  # seconds between progress events
    email: EmailSettings | None = None  # for every job that has no email table of its own
    # more files of [destinations.*] and [jobs.*] tables: glob patterns, relative to
    # jobs.toml's directory ("jobs.d/*.toml")
    include: list[str] = []
    # the daemon runs at most this many jobs (and verifies) at once; the others queue
    max_parallel: StrictInt = Field(default=2, ge=1, le=64)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"{value!r} is not a known time zone (e.g. 'Europe/Berlin')"
                ) from None
        return value


class Retention(_Table):
    """What every destination keeps: retention (retention.py) and the grace before
    what crashed runs left is removed."""

    keep: StrictInt = Field(default=14, ge=1)  # the newest N complete backups of each job
    keep_daily: StrictInt = Field(default=0, ge=0)  # plus the newest of each of the last N days
    keep_weekly: StrictInt = Field(default=0, ge=0)  # ... of each of the last N ISO weeks
    keep_monthly: StrictInt = Field(default=0, ge=0)  # ... of each of the last N months
    keep_yearly: StrictInt = Field(default=0, ge=0)  # ... of each of the last N years
    # every backup made within this long of now ("30d", "8w", "1y", "36h")
    keep_within: Annotated[dt.timedelta | None, BeforeValidator(lambda v: parse_span(v))] = None
    partial_grace_hours: float = Field(default=24.0, gt=0)  # then crashed runs' uploads go


class _DestinationTable(Retention):
    """What every `[destinations.NAME]` table has: retention and default recipients."""

    encrypt_to: list[str] = []  # age recipients for jobs that set none themselves
    # at most this many runs (of any job, in any process) use it at once; none: no limit
    max_connections: StrictInt | None = Field(default=None, ge=1, le=64)

    @field_validator("encrypt_to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return _valid_recipients(value)


class _Reaching(_Table):
    """How long to wait for a remote destination, and how to retry it."""

    connect_timeout: float = Field(default=15.0, gt=0, le=600)
    timeout: float = Field(default=30.0, gt=0, le=3600)  # a connection that stops moving
    retries: StrictInt = Field(default=5, ge=0, le=100)  # extra attempts after transient errors
    retry_wait: float = Field(default=2.0, ge=0, le=600)  # first backoff; doubles each time
    retry_time: float = Field(default=900.0, gt=0, le=86400)  # give up retrying after this


class FtpDestination(_Credentials, _Reaching, _DestinationTable):
    """A `[destinations.NAME]` table with `type = "ftp"`."""

    type: Literal["ftp"]
    host: str = Field(min_length=1)
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    user: str = "anonymous"
    directory: str = "/"
    passive: StrictBool = True
    epsv: Literal["auto"] | StrictBool = "auto"  # auto: EPSV first, PASV after a 500/502
    active_address: str | None = None  # the address to advertise in PORT/EPRT (NAT)
    active_ports: str | None = None  # "50000-50100": local ports for active mode
    tls: Literal["none", "explicit", "implicit"] = "none"
    tls_verify: StrictBool = True
    tls_ca_file: TrustedFile | None = None  # CA bundle for a private or self-signed certificate
    tls_fingerprint: str | None = None  # SHA-256 of the server certificate (pinning)
    tls_max_version: Literal["1.2", "1.3"] | None = None  # "1.2" for servers where 1.3 breaks reuse
    final_reply_timeout: float = Field(default=300.0, gt=0, le=86400)  # 226 after the last byte
    resume: Literal["auto", "rest", "appe", "off"] = "auto"  # auto: REST if FEAT says so

    @field_validator("active_ports")
    @classmethod
    def _port_range(cls, value: str | None) -> str | None:
        if value is not None:
            low, _, high = value.partition("-")
            if not (low.isdigit() and high.isdigit() and 1024 <= int(low) <= int(high) <= 65535):
                raise ValueError(f'{value!r} is not a port range like "50000-50100"')
        return value

    @field_validator("tls_fingerprint")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is not None:
            digits = value.replace(":", "").lower()
            if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
                raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
            return digits
        return value

    @property
    def active_port_range(self) -> range | None:
        if self.active_ports is None:
            return None
        low, _, high = self.active_ports.partition("-")
        return range(int(low), int(high) + 1)

    @property
    def effective_port(self) -> int:
        """The configured port, else 990 for implicit TLS and 21 otherwise."""
        if self.port is not None:
            return self.port
        return 990 if self.tls == "implicit" else 21


class SftpDestination(_Credentials, _Reaching, _DestinationTable):
    """A `[destinations.NAME]` table with `type = "sftp"`: no data connection at all."""

    type: Literal["sftp"]
    host: str = Field(min_length=1)
    port: StrictInt = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    key_file: TrustedFile | None = None  # a private key (OpenSSH format); else the password
    host_key: str | None = None  # the server's key as `ssh-keygen -l` prints it: SHA256:...
    known_hosts: TrustedFile | None = None  # or an OpenSSH known_hosts file that names the host
    directory: str = "."  # relative to the login directory unless it starts with /

    @field_validator("host_key")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}=?", value):
            raise ValueError(
                "must be a key fingerprint as `ssh-keygen -l -f KEY` prints it: SHA256:..."
            )
        return value

    @model_validator(mode="after")
    def _one_way_each(self) -> SftpDestination:
        if self.host_key and self.known_hosts:
            raise ValueError("known_hosts: give host_key or known_hosts, not both")
        if self.key_file and (self.password or self.password_file or self.password_env):
            raise ValueError(f"{self.password_key}: give key_file or a password, not both")
        return self


class LocalDestination(_DestinationTable):
    """A `[destinations.NAME]` table with `type = "local"`: a directory on this host."""

    type: Literal["local"]
    path: AbsolutePath
    # refuse to write unless `path` is a mount point (or below one other than /): an
    # unmounted NAS must not fill the root disk
    require_mount: StrictBool = False


Destination = FtpDestination | SftpDestination | LocalDestination
DESTINATION_MODELS: dict[str, type[_DestinationTable]] = {
    "ftp": FtpDestination,
    "sftp": SftpDestination,
    "local": LocalDestination,
}


class MysqlDatabase(_Credentials):
    """A MySQL/MariaDB database to dump with mariadb-dump (or mysqldump)."""

    type: Literal["mysql"]
    name: str = Field(min_length=1)  # a database, or "all" for every non-system one
    host: str | None = None  # default: the local server through its socket
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    socket: Path | None = None
    user: str | None = None  # default: the dump tool's own default (the login user)
    table_prefix: str | None = None  # dump only the tables whose names start with this


class PostgresDatabase(_Credentials):
    """A PostgreSQL database to dump with pg_dump in custom format."""

    type: Literal["postgresql"]
    name: str = Field(min_length=1)  # a database, or "all" for every non-template one
    host: str | None = None  # a host name, or a socket directory such as /run/postgresql
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    user: str | None = None


class SqliteDatabase(_Table):
    """An SQLite file, copied consistently through SQLite's online backup API."""

    type: Literal["sqlite"]
    path: AbsolutePath
    name: str | None = Field(default=None, min_length=1)  # default: the file name's stem

    @property
    def dump_name(self) -> str:
        return self.name or self.path.stem


Database = Annotated[MysqlDatabase | PostgresDatabase | SqliteDatabase, Field(discriminator="type")]

# Caches and other backup plugins' archives: large, rebuildable, or backups themselves.
WORDPRESS_EXCLUDES = [
    "wp-content/cache/",
    "wp-content/upgrade/",
    "wp-content/updraft/",
    "wp-content/ai1wm-backups/",
    "wp-content/backups-dup-lite/",
    "wp-content/wpvividbackups/",
    "wp-content/uploads/backwpup*/",
    "wp-content/uploads/backupbuddy_backups/",
    "*.log",
]


class Hook(_Table):
    """A command run around a backup (`before`, `after`, `on_failure`), by /bin/sh as the
    agent's user. A plain string is the command with the default timeout."""

    run: str = Field(min_length=1)
    timeout: float = Field(default=300.0, gt=0, le=86400)  # then its process group is killed
    # variables of the agent's environment passed on; by default none (they may hold
    # password_env secrets): the hook sees PATH, HOME, LANG, TZ and BACKUPAGENT_*
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = []


def _command_or_table(value: object) -> object:
    return {"run": value} if isinstance(value, str) else value


HookSetting = Annotated[Hook | None, BeforeValidator(_command_or_table)]


class Job(_Table):
    """A `[jobs.NAME]` table."""

    schedule: str | None = None
    destination: str | None = None  # one destination ...
    destinations: list[str] = []  # ... or several, each getting the same volumes
    require: Literal["all", "any"] = "all"  # "any": the run succeeds if one destination does
    passive: StrictBool | None = None
    sources: list[Path] = []
    exclude: list[str] = []
    databases: list[Database] = []
    wordpress: AbsolutePath | None = None  # a site root: its files plus the wp-config.php database
    # Debian's packaged WordPress: the /etc/wordpress/config-HOST.php its wp-config.php includes
    wordpress_config: AbsolutePath | None = None
    wordpress_exclude: list[str] = WORDPRESS_EXCLUDES  # replaces the default list when set
    wordpress_tables: Literal["all", "prefix"] = "all"  # "prefix": only $table_prefix tables
    catch_up: StrictBool = True  # run once at daemon start if a scheduled run was missed
    fallback: StrictBool = False  # data connection failed: retry once in the other mode
    incremental: StrictBool = False  # after a full, only what changed (incremental.py)
    full_every: StrictInt | str = 7  # a full every N runs (7), or once it is that old ("7d")
    verify_schedule: str | None = None  # cron: download and check the newest backup
    # a scheduled verify reads back only this percentage of the volumes, rotating
    # (readback.py): the whole backup within about 100 / verify_sample verifies
    verify_sample: Annotated[float, Field(gt=0, le=100)] | None = None
    # cron: restore the newest backup into scratch space and load its dumps into scratch
    # databases, on the job's own servers ("configured") or on throwaway local ones
    drill_schedule: str | None = None
    drill_server: Literal["configured", "local"] = "configured"
    # age identity file, for encrypted backups
    drill_identity: Annotated[TrustedFile, AfterValidator(_must_be_absolute)] | None = None
    email: EmailSettings | None = None  # overrides [agent.email] for this job
    ping: PingSettings | None = None
    encrypt_to: list[str] | None = None  # age recipients (age1... or ssh-...); [] = clear
    # spread scheduled starts: each job starts a fixed time after its schedule, between 0
    # and this ("30m", "90s", "2h", or seconds), chosen from its name (start_delay)
    jitter: StrictInt | str = 0
    before: HookSetting = None  # runs first; failing, it fails the run
    after: HookSetting = None  # runs last whenever `before` succeeded (or there is none)
    on_failure: HookSetting = None  # runs after a failed or aborted run

    @field_validator("encrypt_to")
    @classmethod
    def _recipients(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _valid_recipients(value)

    zstd_level: StrictInt = Field(default=3, ge=1, le=22)
    # 0: compress in the archiving thread, the least memory; N: N more threads
    zstd_threads: StrictInt = Field(default=0, ge=0, le=64)
    # the archive is cut into volumes of this size, each uploaded as soon as it is
    # written: the spool never holds more than two volumes
    volume_size: ByteSize = Field(default=64 << 20, ge=64 << 10)

    @field_validator("full_every")
    @classmethod
    def _full_every(cls, value: int | str) -> int | str:
        from backupagent.incremental import parse_full_every

        parse_full_every(value)
        return value

    @field_validator("jitter")
    @classmethod
    def _jitter(cls, value: int | str) -> int | str:
        parse_duration(value)
        return value

    @field_validator("schedule", "verify_schedule", "drill_schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron_trigger(value, None)
        return value

    @field_validator("sources")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        return [_must_be_absolute(path) for path in value]

    @property
    def destination_names(self) -> list[str]:
        return [self.destination] if self.destination else list(self.destinations)

    @model_validator(mode="after")
    def _one_destination_key(self) -> Job:
        if self.destination and self.destinations:
            raise ValueError("destinations: give destination or destinations, not both")
        if not self.destination and not self.destinations:
            raise ValueError("destination: required key is missing")
        for i, name in enumerate(self.destinations):
            if name in self.destinations[:i]:
                raise ValueError(f"destinations[{i}]: {name!r} is named twice")
        return self

    @model_validator(mode="after")
    def _something_to_back_up(self) -> Job:
        if not (self.sources or self.databases or self.wordpress):
            raise ValueError("sources: nothing to back up: give sources, databases or wordpress")
        names = [d.dump_name if isinstance(d, SqliteDatabase) else d.name for d in self.databases]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"databases[{i}].name: {name!r} is dumped twice in this job")
        return self


DATABASE_MODELS: dict[str, type[BaseModel]] = {
    "mysql": MysqlDatabase,
    "postgresql": PostgresDatabase,
    "sqlite": SqliteDatabase,
}


class Config(BaseModel):
    """The whole validated jobs.toml."""

    model_config = ConfigDict(frozen=True)

    path: Path
    # "jobs.NAME" / "destinations.NAME" -> the included file that defines it (not jobs.toml)
    files: dict[str, Path] = {}
    discovered: list[str] = []  # jobs made by [discover] (a [jobs.NAME] may add to one)
    skipped: list[Problem] = []  # sites [discover] found and skipped, with the reason
    agent: AgentConfig = AgentConfig()
    destinations: dict[str, Destination] = {}
    jobs: dict[str, Job] = {}

    def file_of(self, table: str) -> Path:
        """The file that holds `[table]`: what advice tells the user to edit."""
        return self.files.get(table, self.path)

    def label_of(self, table: str) -> str:
        """How problems name that file: jobs.toml's name, an included file's path
        relative to jobs.toml's directory."""
        return file_label(self.file_of(table), self.path)

    def passive_for(self, job_name: str, destination: str | None = None) -> bool:
        """The job's passive setting, else its (FTP) destination's (passive by default)."""
        job = self.jobs[job_name]
        if job.passive is not None:
            return job.passive
        return getattr(self.destination_of(job_name, destination), "passive", True)

    def mode_table(self, job_name: str, destination: str) -> str:
        """Where a `passive` change belongs: the job's table, unless the job has several
        destinations and leaves `passive` to each of them."""
        job = self.jobs[job_name]
        if job.passive is None and len(job.destination_names) > 1:
            return f"destinations.{destination}"
        return f"jobs.{job_name}"

    def recipients_for(self, job_name: str) -> list[str]:
        """The job's age recipients, else its destinations' (parse_config checks they
        agree; empty: not encrypted)."""
        job = self.jobs[job_name]
        if job.encrypt_to is not None:
            return job.encrypt_to
        return self.destination_of(job_name, job.destination_names[0]).encrypt_to

    def connection_limits(self, names: list[str]) -> dict[str, int | None]:
        """Each destination's max_connections (None: no limit)."""
        return {name: self.destinations[name].max_connections for name in names}

    def destination_of(self, job_name: str, name: str | None = None) -> Destination:
        """The settings of the job's destination `name` (by default its first)."""
        return self.destinations[name or self.jobs[job_name].destination_names[0]]


def parse_span(value: object) -> dt.timedelta | None:
    """`keep_within`: `"30d"`, `"8w"`, `"1y"` (365 days), `"36h"`, or sums (`"1y6w"`)."""
    if value is None or isinstance(value, dt.timedelta):
        return value
    text = str(value).strip()
    parts = re.findall(r"(\d+)\s*([hdwy])", text)
    if not parts or re.sub(r"\d+\s*[hdwy]\s*", "", text):
        raise ValueError(f'{value!r} is not a span (write e.g. "30d", "8w", "1y" or "36h")')
    hours = {"h": 1, "d": 24, "w": 24 * 7, "y": 24 * 365}
    span = dt.timedelta(hours=sum(int(n) * hours[unit] for n, unit in parts))
    if not span:
        raise ValueError("must be longer than nothing")
    return span


def parse_duration(value: int | str) -> int:
    """Seconds, from `90`, `"90s"`, `"30m"`, `"2h"` or `"1d"`."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(value))
        if not match:
            raise ValueError(f'{value!r} is not a duration (write e.g. "30m", "90s" or "2h")')
        seconds = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    if not 0 <= seconds <= 86400:
        raise ValueError("must be between 0 and one day")
    return seconds


def start_delay(job_name: str, jitter: int | str) -> dt.timedelta:
    """The job's fixed delay after each scheduled time: its name hashed into
    [0, jitter], the same on every host and restart (so `list` tells the truth)."""
    seconds = parse_duration(jitter)
    if seconds == 0:
        return dt.timedelta(0)
    digest = int.from_bytes(hashlib.sha256(job_name.encode()).digest()[:8], "big")
    return dt.timedelta(seconds=digest % (seconds + 1))


def job_trigger(
    job_name: str, schedule: str, jitter: int | str, timezone: str | None
) -> BaseTrigger:
    """The job's cron trigger, its start delayed by start_delay."""
    from backupagent.triggers import Delayed

    trigger = cron_trigger(schedule, timezone)
    delay = start_delay(job_name, jitter)
    return Delayed(trigger, delay) if delay else trigger


def cron_trigger(schedule: str, timezone: str | None) -> CronTrigger:
    """A trigger for a cron expression: 5 fields, or 6 with a leading seconds field.

    The seconds field is an extension for schedules finer than a minute (and for tests).
    Raises ValueError with a message fit for `jobs.toml: [jobs.X] schedule: ...`.
    """
    from apscheduler.triggers.cron import CronTrigger  # only jobs with a schedule pay for it

    parts = schedule.split()
    if len(parts) not in (5, 6):
        raise ValueError(f"{schedule!r} is not a cron expression of 5 fields (or 6 with seconds)")
    second = parts.pop(0) if len(parts) == 6 else "0"
    minute, hour, day, month, day_of_week = parts
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=cron_weekdays(day_of_week),
            timezone=ZoneInfo(timezone) if timezone else None,
        )
    except ValueError as exc:
        raise ValueError(f"{schedule!r} is not a valid cron expression: {exc}") from None


WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler day names.

    APScheduler 3 counts 0 as Monday, so "0" must not be passed through as it is.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        span, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in day of week: {item!r}")
        if span == "*":
            first, last = 0, 6
        else:
            start, _, end = span.partition("-")
            first = _weekday(start)
            last = _weekday(end) if end else (6 if step else first)
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(WEEKDAYS[d] for d in sorted(days))


def _weekday(token: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token[:3] in WEEKDAYS and len(token) == 3:
        return WEEKDAYS.index(token)
    raise ValueError(f"bad day of week: {token!r} (use 0-7 or sun..sat)")


def _valid_recipients(values: list[str]) -> list[str]:
    from backupagent.crypto import CryptoError, parse_recipient

    for i, value in enumerate(values):
        try:
            parse_recipient(value)
        except CryptoError as exc:
            raise ValueError(f"entry {i + 1} ({value[:24]}...): {exc}") from None
    return values


def default_config_path() -> Path:
    """`$BACKUPAGENT_CONFIG`, else /etc/backupagent/jobs.toml."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> Config:
    """Read and validate jobs.toml and the files it includes, reporting every problem
    at once as ConfigError."""
    return parse_config(_read_toml(path, path.name), path)


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    """A TOML file of the configuration, refused unless only root can change it: its
    hooks run as root (trust.file_problem)."""
    from backupagent import trust

    why = trust.file_problem(path) if path.exists() else None
    if why is not None:
        raise ConfigError([Problem(label, f"not trusted: {path} {why}")])
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([Problem(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(label, f"not valid TOML: {exc}")]) from None


TOP_TABLES = ["agent", "defaults", "destinations", "discover", "jobs"]
INCLUDED_TABLES = ["destinations", "jobs"]  # what an included file may hold


@dataclass(frozen=True)
class _Document:
    """One TOML file of the configuration: jobs.toml or a file it includes."""

    path: Path
    label: str  # how problems name it
    raw: dict[str, Any]


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate an already-parsed jobs.toml (reading the files its `[agent] include`
    names); see load_config."""
    label = path.name
    problems: list[Problem] = []
    _known_tables(raw, TOP_TABLES, label, problems)
    agent = _validate(AgentConfig, raw.get("agent", {}), "agent", label, problems)
    documents = [_Document(path, label, raw)]
    if agent is not None:
        documents += _included(agent.include, path, problems)
    defaults = _defaults(raw, label, problems)

    # [section.NAME] -> the document that defines it; a name is defined once
    found: dict[str, dict[str, tuple[_Document, dict[str, Any]]]] = {}
    for document in documents:
        for section in INCLUDED_TABLES:
            for name, table in _tables(document.raw, section, document.label, problems).items():
                first = found.setdefault(section, {}).setdefault(name, (document, table))
                if first[0] is not document:
                    where = f"{section}.{name}"
                    problems.append(
                        Problem(document.label, f"already defined in {first[0].label}", where)
                    )
    destination_tables = found.get("destinations", {})
    job_tables = found.setdefault("jobs", {})
    skipped: list[Problem] = []
    sites = _discover(raw, path, label, problems, skipped)
    for name, root in sites.items():  # a [jobs.NAME] of a found site adds to it
        document, table = job_tables.get(name, (documents[0], {}))
        job_tables[name] = (document, {"wordpress": str(root), **table})

    destinations: dict[str, Destination] = {}
    for name, (document, table) in destination_tables.items():
        model = DESTINATION_MODELS.get(table.get("type"))  # type: ignore[arg-type]
        where = f"destinations.{name}"
        if model is None:
            kinds = ", ".join(f'"{k}"' for k in DESTINATION_MODELS)
            problems.append(Problem(document.label, f"must be one of {kinds}", where, "type"))
        elif dest := _validate(model, table, where, document.label, problems):
            destinations[name] = dest  # type: ignore[assignment]
    jobs: dict[str, Job] = {}
    for name, (document, table) in job_tables.items():
        found_only = name in sites and table.keys() == {"wordpress"}
        mine: list[Problem] = []
        job = _validate_job(name, table, defaults, document.label, label, mine)
        for problem in mine:  # a default's problem comes once, not once per job
            problem = _as_discovered(problem, name, sites[name]) if found_only else problem
            if problem not in problems:
                problems.append(problem)
        if job is None:
            continue
        jobs[name] = job
        key = "destination" if job.destination else "destinations"
        for wanted in job.destination_names:
            if wanted not in destination_tables:
                known = ", ".join(sorted(destination_tables)) or "none defined"
                problems.append(
                    Problem(
                        document.label,
                        f"no [destinations.{wanted}] table (destinations: {known})",
                        f"jobs.{name}",
                        key,
                    )
                )
        recipients = {
            tuple(destinations[d].encrypt_to) for d in job.destination_names if d in destinations
        }
        if job.drill_schedule and not job.drill_identity and config_recipients(job, recipients):
            problems.append(
                Problem(
                    document.label,
                    "the job's backups are encrypted: a scheduled drill reads them with "
                    "the private key in drill_identity (an age identity file)",
                    f"jobs.{name}",
                    "drill_identity",
                )
            )
        if job.encrypt_to is None and len(recipients) > 1:
            problems.append(
                Problem(
                    document.label,
                    "its destinations name different recipients; the archive is made once, "
                    "so set encrypt_to for the job",
                    f"jobs.{name}",
                    "encrypt_to",
                )
            )
    if problems:
        raise ConfigError(problems)
    files = {
        f"{section}.{name}": document.path
        for section, tables in found.items()
        for name, (document, _) in tables.items()
        if document.path != path
    }
    return Config(
        path=path,
        files=files,
        discovered=sorted(sites),
        skipped=skipped,
        agent=agent or AgentConfig(),
        destinations=destinations,
        jobs=jobs,
    )


def config_recipients(job: Job, recipients: set[tuple[str, ...]]) -> bool:
    """Whether the job encrypts: its own encrypt_to, else its destinations'."""
    return bool(job.encrypt_to) if job.encrypt_to is not None else any(recipients)


def file_label(file: Path, main: Path) -> str:
    """jobs.toml's name, or an included file's path relative to jobs.toml's directory."""
    if file == main:
        return main.name
    return str(file.relative_to(main.parent)) if file.is_relative_to(main.parent) else str(file)


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class Discover(_Table):
    """`[discover]`: jobs made from what is found on this host."""

    # glob patterns of WordPress site roots ("/var/www/*/"): a job for each one that
    # holds wp-config.php, with the [defaults]
    wordpress: Annotated[list[str], BeforeValidator(_one_or_many)] = []


def _discover(
    raw: dict[str, Any], path: Path, label: str, problems: list[Problem], skipped: list[Problem]
) -> dict[str, Path]:
    """The WordPress sites `[discover]` finds, by job name; those it skips are said in
    `skipped` (warnings: one site's name never stops the others)."""
    from backupagent.discovery import wordpress_sites

    settings = _validate(Discover, raw.get("discover", {}), "discover", label, problems)
    if settings is None or not settings.wordpress:
        return {}
    found = wordpress_sites(settings.wordpress, path.parent)
    for root, why in found.skipped.items():
        message = (
            f"the site {printable(str(root))} is skipped: {printable(why)} (the other sites "
            "run; make the pattern tell it apart, or give it a [jobs.NAME] of its own)"
        )
        skipped.append(Problem(label, message, "discover", "wordpress"))
    return found.sites


def _as_discovered(problem: Problem, name: str, root: Path) -> Problem:
    """A problem of a job that has no table of its own: said of [discover]."""
    if problem.table != f"jobs.{name}":
        return problem  # a default's, already said of [defaults]
    key = f"{problem.key}: " if problem.key else ""
    message = f"the site {root} (job {name!r}): {key}{problem.message}; set it in [defaults]"
    return Problem(problem.file, message, "discover", "wordpress")


def _known_tables(
    raw: dict[str, Any], allowed: list[str], label: str, problems: list[Problem]
) -> None:
    for key in raw:
        if key not in allowed:
            problems.append(Problem(label, _unknown_key(key, allowed), key=key))


def _included(patterns: list[str], main: Path, problems: list[Problem]) -> list[_Document]:
    """The files `[agent] include` names (glob patterns, relative to jobs.toml's
    directory), in sorted order; each may hold only destinations and jobs."""
    import glob

    documents = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(main.parent / pattern)
        for name in sorted(glob.glob(full)):
            path = Path(name)
            if path.resolve() == main.resolve() or not path.is_file():
                continue
            label = file_label(path, main)
            try:
                raw = _read_toml(path, label)
            except ConfigError as exc:
                problems += exc.problems
                continue
            _known_tables(raw, INCLUDED_TABLES, label, problems)
            documents.append(_Document(path, label, raw))
    return documents


def _defaults(raw: dict[str, Any], label: str, problems: list[Problem]) -> dict[str, Any]:
    """`[defaults]`: job keys merged under every job (a job's own keys win, whole)."""
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(Problem(label, "must be a table of job keys", key="defaults"))
        return {}
    for key in defaults:
        if key not in Job.model_fields:
            problems.append(
                Problem(label, _unknown_key(key, list(Job.model_fields), Job), "defaults", key)
            )
    return {k: v for k, v in defaults.items() if k in Job.model_fields}


def _validate_job(
    name: str,
    table: dict[str, Any],
    defaults: dict[str, Any],
    label: str,
    main_label: str,
    problems: list[Problem],
) -> Job | None:
    """A job with the defaults under it. A problem with a key the job took from
    `[defaults]` is said of `[defaults]` (the caller reports it once)."""
    try:
        return Job.model_validate({**defaults, **table})
    except ValidationError as exc:
        for err in exc.errors():
            key, message = _describe(Job, err)
            top = re.split(r"[.\[]", key, maxsplit=1)[0]
            if top and top not in table and top in defaults:
                problems.append(Problem(main_label, message, "defaults", key))
            else:
                problems.append(Problem(label, message, f"jobs.{name}", key or None))
        return None


def _tables(
    raw: dict[str, Any], section: str, label: str, problems: list[Problem]
) -> dict[str, dict[str, Any]]:
    """The sub-tables of `[section]`, reporting non-tables and unusable names."""
    value = raw.get(section, {})
    if not isinstance(value, dict):
        problems.append(Problem(label, f"must be a table of [{section}.NAME] tables", key=section))
        return {}
    tables = {}
    for name, table in value.items():
        if not re.fullmatch(NAME_PATTERN, name):  # fullmatch: "$" would let "x\n" pass
            problems.append(
                Problem(
                    label,
                    "the name may use only letters, digits, '.', '_' and '-', and must start "
                    "with a letter or digit",
                    f"{section}.{name}",
                )
            )
        elif not isinstance(table, dict):
            problems.append(Problem(label, "must be a table", f"{section}.{name}"))
        else:
            tables[name] = table
    return tables


def _validate(
    model: type[_M], table: Any, where: str, label: str, problems: list[Problem]
) -> _M | None:
    """Validate one table, appending a Problem for each error."""
    if not isinstance(table, dict):
        problems.append(Problem(label, "must be a table", where))
        return None
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        for err in exc.errors():
            key, message = _describe(model, err)
            problems.append(Problem(label, message, where, key or None))
        return None


def _describe(model: type[BaseModel], err: Any) -> tuple[str, str]:
    """One pydantic error as (key, message), worded for someone editing TOML."""
    raw_loc = err["loc"]
    # drop the discriminator tag pydantic inserts after a list index: databases[0].mysql.port
    tags = [p for i, p in enumerate(raw_loc) if i and isinstance(raw_loc[i - 1], int)]
    loc = [p for p in raw_loc if p not in tags or p not in DATABASE_MODELS]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        table = next((DATABASE_MODELS[t] for t in tags if t in DATABASE_MODELS), model)
        if table is model and len(loc) == 2:  # a key of a table inside: [jobs.x.email] ...
            table = _nested_model(model, str(loc[0])) or model
        msg = _unknown_key(str(loc[-1]), list(table.model_fields), table)
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "value_error" and (
        named := re.match(r"^([a-z_]+(?:\[\d+\])?[a-z_.]*): ", msg)
    ):
        # a model-level check names its key first: "password_file: cannot read ..."
        key = f"{key}.{named[1]}".lstrip(".")
        msg = msg[named.end() :]
    elif (
        "input" in err
        and err["type"] != "value_error"
        and not isinstance(err["input"], dict)
        and not any(str(part) in SECRET_KEYS for part in loc)  # never echo a secret
    ):
        msg = f"{msg} (got {err['input']!r})"
    return key, msg


def _nested_model(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The model of a table-valued field (`before`, `email`, ...), if it is one."""
    import typing

    info = model.model_fields.get(field)
    if info is None:
        return None
    for kind in (info.annotation, *typing.get_args(info.annotation)):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


SECRET_KEYS = {"password"}


# values copied from an example and not replaced: valid, but a backup made with them
# goes nowhere or cannot be restored (age's own README key: nobody holds its identity)
AGE_EXAMPLE_KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
_EXAMPLE_HOST = re.compile(r"(?:^|[./@])example\.(?:com|org|net)(?:$|[:/])", re.IGNORECASE)


def placeholder(value: str) -> str | None:
    """Why `value` looks like an example's placeholder, or None (pure)."""
    if value == AGE_EXAMPLE_KEY:
        return (
            "is the example key from age's README: nobody holds its identity, so no "
            "backup made with it could be restored; make your own with `backupagent keygen`"
        )
    if "your-uuid" in value:
        return "still holds the example's `your-uuid`: put your check's own URL"
    if _EXAMPLE_HOST.search(value):
        return "names an example.com/.org/.net host, reserved for examples: put the real one"
    return None


def _placeholders(config: Config, jobs: dict[str, Job], used: set[str]) -> list[Problem]:
    """Every value of the tables in use that is an example's placeholder."""
    values: list[tuple[str, str, str]] = []  # (table, key, value)
    for name, destination in config.destinations.items():
        if name in used:
            values.append((f"destinations.{name}", "host", getattr(destination, "host", "")))
            values += [(f"destinations.{name}", "encrypt_to", r) for r in destination.encrypt_to]
    emails = [("agent.email", config.agent.email)]
    for name, job in jobs.items():
        values += [(f"jobs.{name}", "encrypt_to", r) for r in job.encrypt_to or []]
        emails.append((f"jobs.{name}.email", job.email))
        if job.ping is not None:
            for key in ("url", "on_start", "on_success", "on_failure"):
                values.append((f"jobs.{name}.ping", key, getattr(job.ping, key) or ""))
    for table, email in emails:
        if email is not None:
            values += [(table, "to", address) for address in email.to]
            values.append((table, "sender", email.sender or ""))
    found = []
    for table, key, value in values:
        if value and (why := placeholder(value)) is not None:
            label = config.label_of(".".join(table.split(".")[:2]))
            found.append(Problem(label, f"{value!r} {why}", table, key))
    return found


def config_warnings(config: Config, only_job: str | None = None) -> list[Problem]:
    """What is valid but unsafe: password and key files that others may read, and
    values left as an example's placeholders (of every table, or of those `only_job`
    uses)."""
    jobs = {only_job: config.jobs[only_job]} if only_job else config.jobs
    used = {name for job in jobs.values() for name in job.destination_names}
    # (the [table] holding it, the key before password_file, the settings)
    tables: list[tuple[str, str, Any]] = [
        *((f"destinations.{n}", "", d) for n, d in config.destinations.items() if n in used),
        *(("agent.email", "", config.agent.email),) * (config.agent.email is not None),
    ]
    for name, job in jobs.items():
        tables.append((f"jobs.{name}", "", job))
        tables += [(f"jobs.{name}", f"databases[{i}].", d) for i, d in enumerate(job.databases)]
        if job.email is not None:
            tables.append((f"jobs.{name}.email", "", job.email))
    warnings = [] if only_job else list(config.skipped)
    for where, prefix, table in tables:
        owner = ".".join(where.split(".")[:2])  # jobs.NAME.email is in jobs.NAME's file
        if getattr(table, "password", None) is not None:  # inline, in the file itself
            held = config.file_of(owner)
            with contextlib.suppress(OSError):
                mode = held.stat().st_mode
                if mode & 0o077:
                    message = (
                        f"{held} holds this password inline and may be read by others (mode "
                        f"{mode & 0o777:o}): chmod 600 {held}, or move it to password_file"
                    )
                    label = config.label_of(owner)
                    warnings.append(Problem(label, message, where, f"{prefix}password"))
        for attribute in ("password_file", "key_file", "drill_identity"):
            path = getattr(table, attribute, None)
            if path is None:
                continue
            try:
                mode = path.stat().st_mode
            except OSError:
                continue
            if mode & 0o077:
                message = f"{path} may be read by others (mode {mode & 0o777:o}): chmod 600 {path}"
                label = config.label_of(owner)
                warnings.append(Problem(label, message, where, f"{prefix}{attribute}"))
    return warnings + _placeholders(config, jobs, used)


def _unknown_key(key: str, allowed: list[str], model: type[BaseModel] | None = None) -> str:
    """`unknown key; did you mean ...?`: the closest key of this table, unless a key of
    the other kind of table (a job's for a destination, a destination's for a job or
    [defaults]) is closer: `retires` in [defaults] means `retries`, not `require`."""
    close = difflib.get_close_matches(key, allowed, n=1)
    other = _other_tables(model)
    if other is not None:
        where, keys = other
        theirs = difflib.get_close_matches(key, keys, n=1)
        if theirs and (
            not close
            or difflib.SequenceMatcher(None, key, theirs[0]).ratio()
            > difflib.SequenceMatcher(None, key, close[0]).ratio()
        ):
            if theirs[0] == key:
                return f"unknown key: {key!r} is a key of {where}, not of this table"
            return f"unknown key; did you mean {theirs[0]!r} (a key of {where})?"
    hint = f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(allowed)})"
    return f"unknown key{hint}"


def _other_tables(model: type[BaseModel] | None) -> tuple[str, list[str]] | None:
    """The keys a mistyped key of `model`'s table may have been meant for."""
    if model is Job:
        keys = {k for m in DESTINATION_MODELS.values() for k in m.model_fields}
        return "[destinations.*]", sorted(keys - set(Job.model_fields))
    if model in DESTINATION_MODELS.values():
        keys = set(Job.model_fields) - {
            k for m in DESTINATION_MODELS.values() for k in m.model_fields
        }
        return "[jobs.*]", sorted(keys)
    return None
