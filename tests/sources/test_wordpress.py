"""wp-config.php is read without PHP: literals only, everything else reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupagent.config import Job
from backupagent.sources.wordpress import (
    DbHost,
    Unevaluable,
    WordPressError,
    evaluate,
    parse_db_host,
    parse_php,
    read_site,
)

CORPUS = Path(__file__).parent / "wp-configs"
JOB = Job(destination="d", wordpress=Path("/var/www/html"))


def _site(tmp_path: Path, name: str, version: str | None = "6.4.2"):
    root = tmp_path / "site"
    (root / "wp-includes").mkdir(parents=True)
    (root / "wp-config.php").write_text((CORPUS / name).read_text())
    if version:
        (root / "wp-includes" / "version.php").write_text(
            f"<?php\n/** The WordPress version string. */\n$wp_version = '{version}';\n"
            "$wp_db_version = 56657;\n"
        )
    return read_site(root, JOB)


@pytest.mark.parametrize(
    ("name", "db", "user", "password", "host", "prefix"),
    [
        (
            "standard.php",
            "wordpress",
            "wp_user",
            "p@ss'word\\x",
            DbHost("localhost", None, None),
            "wp_",
        ),
        (
            "oldstyle.php",
            "site2",
            "user2",
            'dollar$sign "quoted" tab\\there',
            DbHost("db.example.com", 3307, None),
            "site2_",
        ),
        (
            "socket.php",
            "sockdb",
            "sockuser",
            "",
            DbHost("localhost", None, "/var/run/mysqld/mysqld.sock"),
            "wp3_",
        ),
    ],
)
def test_corpus(
    tmp_path: Path, name: str, db: str, user: str, password: str, host: DbHost, prefix: str
) -> None:
    site = _site(tmp_path, name)
    assert site.database == db
    assert site.target.db.user == user
    assert site.target.password == password
    assert (
        site.target.db.host,
        site.target.db.port,
        str(site.target.db.socket) if site.target.db.socket else None,
    ) == (host.host, host.port, host.socket)
    assert site.table_prefix == prefix
    assert site.version == "6.4.2"


def test_expressions_needing_php_are_reported_not_guessed(tmp_path: Path) -> None:
    with pytest.raises(WordPressError) as info:
        _site(tmp_path, "env.php")
    problems = info.value.problems
    assert any(
        p.startswith("DB_NAME is set by an expression that needs PHP") and "getenv" in p
        for p in problems
    )
    assert any(p.startswith("DB_PASSWORD is set by an expression") for p in problems)
    assert any(p.startswith("$table_prefix is not a plain string") for p in problems)
    assert not any(p.startswith(("DB_USER", "DB_HOST")) for p in problems)


def test_missing_defines_are_reported(tmp_path: Path) -> None:
    with pytest.raises(WordPressError) as info:
        _site(tmp_path, "missing.php")
    assert info.value.problems == ["DB_USER is not defined", "DB_PASSWORD is not defined"]


def test_debians_packaged_wordpress_says_what_to_write_instead(tmp_path: Path) -> None:
    """Its wp-config.php includes /etc/wordpress/config-HOST.php by the request's host."""
    with pytest.raises(WordPressError) as info:
        _site(tmp_path, "debian.php")
    (problem,) = info.value.problems
    assert problem.startswith("Debian's packaged WordPress: wp-config.php includes")
    assert "`sources`" in problem and "`databases = [" in problem


def test_missing_config_file(tmp_path: Path) -> None:
    (tmp_path / "empty-site").mkdir()
    with pytest.raises(WordPressError, match="cannot read"):
        read_site(tmp_path / "empty-site", JOB)


def test_config_one_level_up(tmp_path: Path) -> None:
    (tmp_path / "public_html").mkdir()
    (tmp_path / "wp-config.php").write_text((CORPUS / "standard.php").read_text())
    site = read_site(tmp_path / "public_html", JOB)
    assert site.config_file == tmp_path / "wp-config.php"
    assert site.version is None


def test_prefix_only_option(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "wp-config.php").write_text((CORPUS / "oldstyle.php").read_text())
    assert read_site(root, JOB).target.table_prefix is None
    prefixed = read_site(root, JOB.model_copy(update={"wordpress_tables": "prefix"}))
    assert prefixed.target.table_prefix == "site2_"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", DbHost("localhost", None, None)),
        ("localhost:3307", DbHost("localhost", 3307, None)),
        ("127.0.0.1:3306", DbHost("127.0.0.1", 3306, None)),
        ("localhost:/tmp/mysql.sock", DbHost("localhost", None, "/tmp/mysql.sock")),
        (":/tmp/mysql.sock", DbHost(None, None, "/tmp/mysql.sock")),
        ("[::1]:3306", DbHost("::1", 3306, None)),
        ("[fd00::5]", DbHost("fd00::5", None, None)),
        (" db.internal ", DbHost("db.internal", None, None)),
    ],
)
def test_db_host_forms(value: str, expected: DbHost) -> None:
    assert parse_db_host(value) == expected


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("'a'", "a"),
        ('"a\\nb"', "a\nb"),
        ("'it\\'s'", "it's"),
        ("'c:\\\\path'", "c:\\path"),
        ("'a' . \"b\" . 'c'", "abc"),
        ("42", 42),
        ("false", False),
        ("TRUE", True),
        ('"\\x41\\101"', "AA"),
        ("'a' .", Unevaluable("'a' .")),
        ("__DIR__ . '/'", Unevaluable("__DIR__ . '/'")),
        ('"pre{$x}post"', Unevaluable('"pre{$x}post"')),
        ("", Unevaluable("")),
    ],
)
def test_evaluate(expression: str, value: object) -> None:
    assert evaluate(expression) == value


def test_commented_defines_are_ignored() -> None:
    found = parse_php((CORPUS / "oldstyle.php").read_text())
    assert found.constants["DB_NAME"] == "site2"
    assert found.constants["DB_USER"] == "user2"


@pytest.mark.parametrize(
    ("literal", "value"),
    [('"a\\xffb"', "a\udcffb"), ('"a\\377b"', "a\udcffb"), ('"a\\x41"', "aA"), ('"\\101"', "A")],
)
def test_escapes_past_ascii_are_raw_bytes_as_php_makes_them(literal: str, value: str) -> None:
    """PHP's "\\xff" is one byte, not the character U+00FF: it is kept as that byte,
    which read_site then refuses as not UTF-8."""
    assert evaluate(literal) == value


def test_a_hostile_file_parses_in_bounded_time() -> None:
    """1 MiB of unclosed calls and assignments (before: every one scanned to the end
    of the file, hours of work); in a child with a time limit, so a regression fails
    instead of hanging the suite."""
    import subprocess
    import sys

    script = (
        "from backupagent.sources.wordpress import parse_php\n"
        "text = '<?php ' + 'define(' * 80_000 + '$a = ' * 80_000 + \"'x\" * 80_000\n"
        "found = parse_php(text)\n"
        "print(len(found.constants), len(found.variables))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
