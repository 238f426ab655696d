"""wp-config.php is read without PHP: literals only, everything else reported."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from backupagent.config import Job
from backupagent.sources.wordpress import (
    DbHost,
    Unevaluable,
    WordPressError,
    evaluate,
    merged,
    parse_db_host,
    parse_php,
    read_site,
)

from ..conftest import require_system

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
    assert 'wordpress_config = "/etc/wordpress/config-HOST.php"' in problem


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


@pytest.fixture(scope="session")
def debian_wordpress() -> Path:
    """/usr/share/wordpress of Debian's own `wordpress` package (apt-get download, dpkg
    -x; kept in .cache/debian-wordpress): its real wp-config.php, fallbacks and all."""
    unpacked = Path(__file__).parents[2] / ".cache" / "debian-wordpress"
    config = unpacked / "usr/share/wordpress/wp-config.php"
    if not config.exists():
        tools = shutil.which("apt-get") and shutil.which("dpkg")
        require_system(bool(tools), "apt-get and dpkg are needed for Debian's wordpress")
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=unpacked.parent) as download:
            got = subprocess.run(
                ["apt-get", "download", "wordpress"], cwd=download, capture_output=True, text=True
            )
            require_system(got.returncode == 0, f"apt-get download wordpress: {got.stderr[-300:]}")
            (deb,) = Path(download).glob("wordpress_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), f"{download}/x"], check=True)
            with contextlib.suppress(OSError):  # another test worker's came first
                os.rename(f"{download}/x", unpacked)
    return unpacked / "usr/share/wordpress"


def _debian_site(tmp_path: Path, packaged: Path) -> Path:
    root = tmp_path / "usr-share-wordpress"
    (root / "wp-includes").mkdir(parents=True)
    shutil.copy(packaged / "wp-config.php", root / "wp-config.php")
    shutil.copy(packaged / "wp-includes" / "version.php", root / "wp-includes" / "version.php")
    return root


def test_debians_real_wp_config_needs_the_included_file_named(
    tmp_path: Path, debian_wordpress: Path
) -> None:
    """Its fallbacks (`if (!defined('DB_NAME')) define('DB_NAME', 'wordpress')`) are not
    the site's settings: without wordpress_config the job is refused, naming the key."""
    root = _debian_site(tmp_path, debian_wordpress)
    with pytest.raises(WordPressError) as info:
        read_site(root, Job(destination="d", wordpress=root))
    (problem,) = info.value.problems
    assert problem.startswith("Debian's packaged WordPress") and "wordpress_config" in problem


def test_debians_real_wp_config_with_its_included_file(
    tmp_path: Path, debian_wordpress: Path
) -> None:
    """As Debian's setup-mysql writes /etc/wordpress/config-HOST.php: its values win; what
    it leaves out takes the package's fallback (DB_HOST 'localhost'); the version is
    the package's."""
    root = _debian_site(tmp_path, debian_wordpress)
    etc = tmp_path / "etc-wordpress"
    etc.mkdir()
    included = etc / "config-blog.example.net.php"
    included.write_text(
        "<?php\n# Created by setup-mysql\n"
        "define('DB_NAME', 'blogdb');\ndefine('DB_USER', 'bloguser');\n"
        "define('DB_PASSWORD', 'it''s \\\\ secret');\n".replace("''", "\\'")
        + "define('SECRET_KEY', 'k');\ndefine('WP_CONTENT_DIR', '/srv/blog/wp-content');\n"
        "$table_prefix = 'blog_';\n?>\n"
    )
    site = read_site(root, Job(destination="d", wordpress=root, wordpress_config=included))
    db = site.target.db
    assert (site.database, db.user, site.target.password) == (
        "blogdb",
        "bloguser",
        "it's \\ secret",
    )
    assert db.host == "localhost"  # the package's fallback: the included file has no DB_HOST
    assert site.table_prefix == "blog_" and site.config_file == included
    assert site.version is not None and site.version.startswith("6.")
    (root / "wp-config.php").unlink()
    (root / "wp-config.php").symlink_to(debian_wordpress / "wp-config.php")
    with pytest.raises(WordPressError):  # a link is not followed, as for any site
        read_site(root, Job(destination="d", wordpress=root, wordpress_config=included))


def test_an_included_file_that_is_a_link_is_refused(tmp_path: Path, debian_wordpress: Path) -> None:
    root = _debian_site(tmp_path, debian_wordpress)
    etc = tmp_path / "etc-wordpress"
    etc.mkdir()
    (tmp_path / "elsewhere.php").write_text("<?php define('DB_NAME', 'x');\n")
    (etc / "config-x.php").symlink_to(tmp_path / "elsewhere.php")
    with pytest.raises(WordPressError):
        read_site(root, Job(destination="d", wordpress=root, wordpress_config=etc / "config-x.php"))


FALLBACKS = [
    ("<?php if (!defined('DB_NAME')) define('DB_NAME', 'a');", {}, {"DB_NAME": "a"}),
    ("<?php if ( ! defined( 'DB_NAME' ) ) { define( 'DB_NAME', 'a' ); }", {}, {"DB_NAME": "a"}),
    ("<?php define('DB_NAME', 'b');", {"DB_NAME": "b"}, {}),
    # guarded by another name: a plain define
    ("<?php if (!defined('X')) define('DB_NAME', 'c');", {"DB_NAME": "c"}, {}),
]


@pytest.mark.parametrize(("php", "constants", "fallbacks"), FALLBACKS)
def test_guarded_defines_are_fallbacks(php: str, constants: dict, fallbacks: dict) -> None:
    parsed = parse_php(php)
    assert (parsed.constants, parsed.fallbacks) == (constants, fallbacks)
    assert merged(parsed, parse_php("<?php define('DB_NAME', 'z');")).constants["DB_NAME"] == "z"
