"""What a failed database dump or an unreadable wp-config.php means, from the tool's
own words: the keys to check, and no FTP advice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backupagent.diagnosis.common import Category, Diagnosis


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
    path: Path | None = None  # SQLite: the database file


# in a failed SQLite copy's words: SQLite could not make its -shm file (diagnose_dump)
SQLITE_READ_ONLY = "read-only to this process"

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
    if failure.engine == "sqlite" and SQLITE_READ_ONLY in failure.stderr:
        where = failure.path.parent if failure.path else "the database's directory"
        return Diagnosis(
            Category.DB_FAILED,
            f"{label} failed: SQLite cannot read it without writing in its directory",
            tail,
            f"Let the agent write {where}: under systemd run `systemctl edit backupagent` "
            f"(and backupagent-run@ if you use the timers) and add `ReadWritePaths={where}` "
            "under [Service]. Or have the application checkpoint its database "
            "(PRAGMA wal_checkpoint(TRUNCATE)), or take it out of WAL mode.",
            keys=keys("name"),
            table=failure.table,
            file=failure.file,
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


def hook_diagnosis(job: str, verdict: str, command: str, tail: tuple[str, ...]) -> Diagnosis:
    """The job's `before` command failed: the backup did not start."""
    return Diagnosis(
        Category.HOOK,
        f"{verdict}; the backup did not start",
        (f"command: {command}", *tail),
        "Run the command by hand as the agent's user to see why (the hook's output is in "
        "the run log); the hook sees only PATH, HOME, LANG, LC_ALL, TZ, the BACKUPAGENT_* "
        "variables and those its `env` names. Fix it, raise its `timeout`, or remove it.",
        keys=("before",),
        table=f"jobs.{job}",
    )


def wordpress_diagnosis(problems: list[str], config_file: Path | None) -> Diagnosis:
    """wp-config.php gave no usable database settings."""
    return Diagnosis(
        Category.WORDPRESS_CONFIG,
        "the database settings could not be read from wp-config.php",
        tuple(problems),
        "Give DB_NAME, DB_USER, DB_PASSWORD and DB_HOST as plain strings in wp-config.php, "
        "or replace `wordpress` in the job by `sources` and an explicit `databases` entry.",
        keys=("DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST"),
        table="",
        file=config_file,
    )
