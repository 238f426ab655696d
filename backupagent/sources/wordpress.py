"""WordPress sites: read the database settings from wp-config.php without running PHP.

Only literal values are read (strings in either quote style, numbers, booleans, and
literal strings joined with `.`); anything else, such as `getenv('DB_PASSWORD')`,
is reported as a problem, never guessed.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from backupagent import process, trust
from backupagent.config import Job, MysqlDatabase
from backupagent.sources.databases import Target
from backupagent.text import printable

SETTINGS = ("DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST")


class WordPressError(Exception):
    """wp-config.php is missing or does not give the database settings plainly."""

    def __init__(self, config_file: Path, problems: list[str]) -> None:
        super().__init__(f"{config_file}: " + "; ".join(problems))
        self.config_file = config_file
        self.problems = problems


@dataclass(frozen=True)
class Unevaluable:
    """A value the parser will not evaluate (it would need PHP)."""

    source: str


Value = str | int | float | bool | None | Unevaluable


@dataclass
class PhpAssignments:
    """The `define()`d constants and `$variable = ...;` assignments found in a PHP file."""

    constants: dict[str, Value] = field(default_factory=dict)
    variables: dict[str, Value] = field(default_factory=dict)
    # `if (!defined('X')) define('X', ...)`: a value for when nothing before defined X
    # (Debian's packaged wp-config.php gives DB_NAME 'wordpress' so, after its include)
    fallbacks: dict[str, Value] = field(default_factory=dict)


def strip_comments(php: str) -> str:
    """PHP source with comments blanked out; string literals are kept as they are."""
    out: list[str] = []
    i, n = 0, len(php)
    while i < n:
        ch = php[i]
        if ch in "'\"":
            end = _string_end(php, i)
            out.append(php[i:end])
            i = end
        elif php.startswith("/*", i):
            end = php.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(" ")
            i = end
        elif ch == "#" or php.startswith("//", i):
            end = i
            while end < n and php[end] != "\n" and not php.startswith("?>", end):
                end += 1
            out.append(" ")
            i = end
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal that opens at `start` (or the end of text)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == quote:
            return i + 1
        else:
            i += 1
    return len(text)


_DOUBLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "v": "\v",
    "e": "\x1b",
    "f": "\f",
    "\\": "\\",
    "$": "$",
    '"': '"',
}


def _byte(value: int) -> str:
    """The byte PHP's `\\xFF` or `\\377` puts in a string: past ASCII it is a raw byte,
    kept as the surrogate the "surrogateescape" decoder would make of it."""
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


def _unquote(literal: str) -> str | Unevaluable:
    """The value of one PHP string literal; interpolating strings are Unevaluable."""
    body = literal[1:-1]
    if literal[0] == "'":
        return re.sub(r"\\([\\'])", r"\1", body)
    if re.search(r"(?<!\\)\$[A-Za-z_{]|\{\$", body):
        return Unevaluable(literal)

    def escape(match: re.Match[str]) -> str:
        seq = match.group(1)
        if seq in _DOUBLE_ESCAPES:
            return _DOUBLE_ESCAPES[seq]
        if seq[0] == "x":
            return _byte(int(seq[1:], 16))
        if seq[0] in "01234567":
            return _byte(int(seq, 8) % 256)
        return match.group(0)

    return re.sub(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", escape, body)


_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>true|false|null)|(?P<dot>\.))\s*""",
    re.IGNORECASE | re.DOTALL,
)


def evaluate(expression: str) -> Value:
    """A literal, or literal strings joined with `.`; anything else is Unevaluable."""
    text = expression.strip()
    parts: list[str] = []
    pos, want_value = 0, True
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            return Unevaluable(text)
        pos = match.end()
        if want_value:
            if match["str"]:
                value = _unquote(match["str"])
                if isinstance(value, Unevaluable):
                    return Unevaluable(text)
                parts.append(value)
            elif (match["num"] or match["word"]) and not parts and pos == len(text):
                if match["num"]:
                    number = match["num"]
                    return float(number) if "." in number else int(number)
                return {"true": True, "false": False, "null": None}[match["word"].lower()]
            else:
                return Unevaluable(text)
        elif not match["dot"]:
            return Unevaluable(text)
        want_value = not want_value
    if want_value:  # empty, or ends with a dangling "."
        return Unevaluable(text)
    return "".join(parts)


# wp-config.php is a tenant's: what it may make the parser do is bounded
MAX_CALLS = 1000  # define() calls, and assignments, read from one file
SCAN_WINDOW = 1 << 12  # characters one call's arguments (or one assignment) may span


def _call_arguments(code: str, start: int) -> tuple[list[str], int]:
    """Split the arguments of a call whose "(" is at `start`; returns them and the end
    index (no arguments for a call longer than SCAN_WINDOW)."""
    depth, i, args, current = 0, start, [], start + 1
    end = min(len(code), start + SCAN_WINDOW)
    while i < end:
        ch = code[i]
        if ch in "'\"":
            i = _string_end(code, i)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                args.append(code[current:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(code[current:i])
            current = i + 1
        i += 1
    return [], end


# `if (!defined('NAME') ...)` (and `{`) right before a define: the define is a fallback
_GUARD = re.compile(r"\bif\s*\(\s*!\s*defined\s*\(\s*(['\"])(\w+)\1\s*\)[^;{}]*\)\s*\{?\s*\Z")


def parse_php(php: str) -> PhpAssignments:
    """Collect `define('NAME', value)` calls and `$name = value;` assignments (the
    first MAX_CALLS of each, each within SCAN_WINDOW: the time taken stays linear in
    the file's size, whatever it holds)."""
    code = strip_comments(php)
    found = PhpAssignments()
    calls = re.finditer(r"\bdefine\s*\(", code, re.IGNORECASE)
    for match in itertools.islice(calls, MAX_CALLS):
        args, _ = _call_arguments(code, match.end() - 1)
        if len(args) >= 2:
            name = evaluate(args[0])
            if isinstance(name, str):
                guard = _GUARD.search(code, max(0, match.start() - SCAN_WINDOW), match.start())
                if guard is not None and guard[2] == name:
                    found.fallbacks.setdefault(name, evaluate(args[1]))
                else:
                    found.constants[name] = evaluate(args[1])
    assignments = re.finditer(r"\$([A-Za-z_]\w*)\s*=(?!=)", code)
    for match in itertools.islice(assignments, MAX_CALLS):
        end, limit = match.end(), min(len(code), match.end() + SCAN_WINDOW)
        while end < limit and code[end] != ";":
            end = _string_end(code, end) if code[end] in "'\"" else end + 1
        value = code[match.end() : end] if end < limit else "(longer than the parser reads)"
        found.variables[match[1]] = evaluate(value)
    return found


@dataclass(frozen=True)
class DbHost:
    host: str | None
    port: int | None
    socket: str | None


def parse_db_host(value: str) -> DbHost:
    """DB_HOST as WordPress reads it: host, host:port, host:/socket, host:port:/socket, [v6]."""
    host, port, socket = value.strip(), None, None
    if ":/" in host:
        host, socket = host.split(":/", 1)
        socket = "/" + socket
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", host)
    if bracketed:
        host, port = bracketed[1], int(bracketed[2]) if bracketed[2] else None
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        if port_text.isdigit():
            port = int(port_text)
    return DbHost(host or None, port, socket)


@dataclass(frozen=True)
class Site:
    """What the agent learned about a WordPress site."""

    root: Path
    config_file: Path
    database: str
    table_prefix: str
    version: str | None
    target: Target


MAX_FILE = 1 << 20  # bytes of wp-config.php (or version.php) read, at most
MAX_SETTING = 1024  # characters of one DB_* setting or $table_prefix


def read_site(root: Path, job: Job) -> Site:
    """Parse wp-config.php (and the version file) into a MySQL dump target.

    The file is a tenant's: it is opened under the site root without following a link
    (a link could lead to another site's), must be a regular file of at most MAX_FILE
    bytes (a FIFO would block, /dev/zero never end) and belong to the directory's owner
    or root (a hard link to another site's file belongs to that site); every value is
    data, refused if it holds a control character. The database clients then run as the
    file's owner (process.Identity), not as root."""
    config_file = root / "wp-config.php"
    try:
        root_fd = trust.open_directory(root)
    except trust.Untrusted as exc:
        raise WordPressError(config_file, [str(exc)]) from None
    except OSError as exc:
        raise WordPressError(
            config_file, [f"cannot open the site: {exc.strerror or exc}"]
        ) from None
    try:
        config_file, text, owner = _read_config(root, root_fd)
        version = _read_version(root_fd)
    finally:
        os.close(root_fd)
    parsed = parse_php(text)
    if DEBIAN_INCLUDE in text:  # Debian's package: the settings are in /etc/wordpress
        if job.wordpress_config is None:
            raise WordPressError(config_file, [debian_packaged(DEBIAN_ETC)])
        config_file, included, owner = _read_included(job.wordpress_config)
        parsed = merged(parsed, parse_php(included))
    else:
        parsed = merged(parsed, PhpAssignments())
    return _site(root, config_file, parsed, owner, version, job)


def merged(main: PhpAssignments, included: PhpAssignments) -> PhpAssignments:
    """What PHP ends up with when `main` includes `included` first: the included file's
    constants and variables, then `main`'s, then the fallbacks of either for what
    neither defined (pure)."""
    constants = {**included.fallbacks, **main.fallbacks, **main.constants, **included.constants}
    return PhpAssignments(constants, {**main.variables, **included.variables})


def _read_included(path: Path) -> tuple[Path, str, os.stat_result]:
    """`wordpress_config`: Debian's /etc/wordpress/config-HOST.php, read as wp-config.php
    is (no link followed, a regular file, its directory's owner's or root's)."""
    try:
        directory = trust.open_directory(path.parent)
    except (trust.Untrusted, OSError) as exc:
        reason = exc if isinstance(exc, trust.Untrusted) else (exc.strerror or exc)
        raise WordPressError(path, [f"cannot open its directory: {reason}"]) from None
    try:
        return (path, *_read_tenant_file(path, path.name, directory))
    finally:
        os.close(directory)


def _site(
    root: Path,
    config_file: Path,
    parsed: PhpAssignments,
    owner: os.stat_result,
    version: str | None,
    job: Job,
) -> Site:
    problems = []
    values: dict[str, str] = {}
    for name in SETTINGS:
        value = parsed.constants.get(name, Unevaluable(""))
        if name not in parsed.constants:
            problems.append(f"{name} is not defined")
        elif isinstance(value, Unevaluable):
            problems.append(
                f"{name} is set by an expression that needs PHP to evaluate "
                f"({printable(value.source[:200])}); define it as a plain string"
            )
        else:
            values[name] = "" if value is None else str(value)
            if unsafe := _unsafe(values[name]):
                problems.append(f"{name} {unsafe}")
    prefix = parsed.variables.get("table_prefix", "wp_")
    if isinstance(prefix, Unevaluable) or not isinstance(prefix, str):
        shown = prefix.source[:200] if isinstance(prefix, Unevaluable) else str(prefix)
        problems.append(f"$table_prefix is not a plain string ({printable(shown)})")
    elif unsafe := _unsafe(prefix):
        problems.append(f"$table_prefix {unsafe}")
    if problems:
        raise WordPressError(config_file, problems)
    assert isinstance(prefix, str)
    where = DbHost(None, None, None) if not values["DB_HOST"] else parse_db_host(values["DB_HOST"])
    db = MysqlDatabase(
        type="mysql",
        name=values["DB_NAME"],
        host=where.host,
        port=where.port,
        socket=Path(where.socket) if where.socket else None,
        user=values["DB_USER"] or None,
        password=SecretStr(values["DB_PASSWORD"]),
    )
    keys = (
        ("user", "DB_USER"),
        ("password", "DB_PASSWORD"),
        ("name", "DB_NAME"),
        ("host", "DB_HOST"),
        ("port", "DB_HOST"),
        ("socket", "DB_HOST"),
    )
    only_prefix = prefix if job.wordpress_tables == "prefix" else None
    target = Target(
        db,
        values["DB_PASSWORD"],
        keys,
        "",
        config_file,
        only_prefix,
        run_as=process.Identity.owner_of(owner),
    )
    return Site(root, config_file, values["DB_NAME"], prefix, version, target)


def _unsafe(value: str) -> str | None:
    """Why a setting from wp-config.php is refused, or None: values are data, and a
    line break in one would be a new option for the database client."""
    for char in value:
        if 0xDC80 <= ord(char) < 0xDD00:
            return "is not valid UTF-8; refused"
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return (
                f"contains a control character (\\x{ord(char):02x}); refused: it could change "
                "how the database client is called"
            )
    if len(value) > MAX_SETTING:
        return f"is longer than {MAX_SETTING} characters; refused"
    return None


_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _read_config(root: Path, root_fd: int) -> tuple[Path, str, os.stat_result]:
    """wp-config.php in the root, or one level up as WordPress allows: its path, text
    and status."""
    here = root / "wp-config.php"
    if _exists("wp-config.php", root_fd):
        return (here, *_read_tenant_file(here, "wp-config.php", root_fd))
    above = root.parent / "wp-config.php"
    parent_fd = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        if _exists("wp-config.php", parent_fd) and not _exists("wp-settings.php", parent_fd):
            return (above, *_read_tenant_file(above, "wp-config.php", parent_fd))
    finally:
        os.close(parent_fd)
    raise WordPressError(here, ["cannot read: No such file or directory"])


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _read_tenant_file(shown: Path, name: str, dir_fd: int) -> tuple[str, os.stat_result]:
    """The text of a file a tenant wrote, bounded and without following a link (see
    read_site); its status says whose it is."""
    try:
        fd = os.open(name, _OPEN, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WordPressError(
                shown,
                [
                    "is a symbolic link; refused: it could lead to another site's settings "
                    "(make it a file of its own)"
                ],
            ) from None
        raise WordPressError(shown, [f"cannot read: {exc.strerror or exc}"]) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        directory = os.fstat(dir_fd)
        if not stat.S_ISREG(info.st_mode):
            raise WordPressError(shown, ["is not a regular file (a FIFO or a device?); refused"])
        only_root = directory.st_uid == 0 and not directory.st_mode & 0o022
        if info.st_uid not in (0, directory.st_uid) and not only_root:
            raise WordPressError(
                shown,
                [
                    f"belongs to {trust.owner_name(info.st_uid)}, not to the owner of its "
                    f"directory ({trust.owner_name(directory.st_uid)}) or root; refused: it "
                    "could be another site's file linked here"
                ],
            )
        data = handle.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise WordPressError(shown, [f"is larger than {MAX_FILE} bytes; refused"])
    return data.decode("utf-8", "surrogateescape"), info


DEBIAN_ETC = Path("/etc/wordpress")  # where Debian's and Ubuntu's packaged WordPress
DEBIAN_INCLUDE = f"{DEBIAN_ETC}/config-"  # keeps the settings its wp-config.php includes


def debian_packaged(etc: Path) -> str:
    """Why the packaged WordPress's settings cannot be read, and what to write instead."""
    found = sorted(str(p) for p in etc.glob("config-*.php"))
    where = f" (here: {', '.join(found)})" if found else ""
    return (
        "Debian's packaged WordPress: wp-config.php includes /etc/wordpress/config-HOST.php, "
        f"chosen by the host name of each web request, which a backup cannot know{where}; "
        'name the site\'s in the job: wordpress_config = "/etc/wordpress/config-HOST.php" '
        "(its uploads live in WP_CONTENT_DIR, /var/lib/wordpress/wp-content unless that "
        "file says otherwise: add it to `sources`)"
    )


def _read_version(root_fd: int) -> str | None:
    """$wp_version from wp-includes/version.php, if it can be read as read_site reads."""
    try:
        includes = os.open("wp-includes", _OPEN | os.O_DIRECTORY, dir_fd=root_fd)
    except OSError:
        return None
    try:
        text, _ = _read_tenant_file(Path("version.php"), "version.php", includes)
    except WordPressError:
        return None
    finally:
        os.close(includes)
    version = parse_php(text).variables.get("wp_version")
    return version if isinstance(version, str) and not _unsafe(version) else None
