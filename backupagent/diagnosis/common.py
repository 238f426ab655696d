"""What every diagnosis is made of: the category, the verdict with its evidence and
advice, the result of probing the other mode, and the one way to write the change."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

NOT_A_MODE_PROBLEM = "This is not a passive/active mode problem."


class Category(StrEnum):
    PASSIVE_DATA = "passive_data_connection"
    ACTIVE_DATA = "active_data_connection"
    PASSIVE_UNSUPPORTED = "passive_not_supported"
    LOGIN = "login"
    PATH = "path_or_permission"
    NO_SPACE = "server_out_of_space"
    HOST = "host_unreachable"
    TLS = "tls"
    HOST_KEY = "ssh_host_key"
    DATA_BROKEN = "data_transfer_broken"
    CONTROL_LOST = "control_connection_lost"
    SERVER_ERROR = "server_error"
    PROTOCOL = "server_protocol_error"
    UNKNOWN = "unknown"
    DB_LOGIN = "database_login"
    DB_UNKNOWN = "database_unknown"
    DB_UNREACHABLE = "database_unreachable"
    DB_TOOL_MISSING = "dump_tool_missing"
    DB_INCOMPLETE = "dump_incomplete"
    DB_FAILED = "dump_failed"
    WORDPRESS_CONFIG = "wordpress_config"
    HOOK = "hook_failed"


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

    def change(self, probe: ProbeResult | None = None) -> str | None:
        """The jobs.toml line to write, unless no flip helps or the probe of the other
        mode failed too."""
        if self.passive_should_be is None or (probe is not None and not probe.ok):
            return None
        return passive_setting(self.passive_should_be)


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of a tiny listing transfer tried in one mode."""

    passive: bool
    ok: bool
    detail: str
    ssh_too: bool = False  # the server also answers SSH on port 22


def mode_name(passive: bool) -> str:
    return "passive" if passive else "active"


def passive_setting(passive: bool) -> str:
    """The jobs.toml line that sets the mode: `passive = true` or `passive = false`."""
    return f"passive = {'true' if passive else 'false'}"
