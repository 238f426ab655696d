"""The hostile-tenant suite: what a site's owner, another local user, a database
server's contents and a dump that came back from a server can make the agent (root) do.
Each test asserts that nothing outside the intended place changed, that no command of
theirs ran, and that the error names the site, the file and the key (README "Security")."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backupagent.config import Config
from backupagent.ftpserver import LocalFtpServer

from ..actions.test_backup import download_archive
from ..conftest import require_system
from ..databases import MariaDB
from ..helpers import cli, decompress, snapshot
from .conftest import Tenants
from .jobs import ftp_jobs_toml, published, said

WriteConfig = Callable[..., Config]
DB_PASSWORD = "tenant pw"


@pytest.fixture(scope="module")
def evil_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A client plugin a site's owner could build: loaded, it writes a marker with its
    uid. (its directory, the marker it would write)"""
    gcc = shutil.which("gcc") or shutil.which("cc")
    require_system(gcc is not None, "a C compiler is needed to build the hostile plugin")
    assert gcc is not None
    base = Path(tmp_path_factory.mktemp("plugin"))
    marker = base / "marker"
    source = base / "evil.c"
    source.write_text(
        "#include <stdio.h>\n#include <unistd.h>\n"
        "__attribute__((constructor)) static void pwn(void) {\n"
        f'  FILE *f = fopen("{marker}", "w");\n'
        '  if (f) { fprintf(f, "uid=%d\\n", (int)getuid()); fclose(f); }\n}\n'
    )
    plugins = base / "plugins"
    plugins.mkdir()
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-o", str(plugins / "evil.so"), str(source)],
        check=True,
        capture_output=True,
    )
    yield plugins, marker


@pytest.fixture(scope="module")
def site_db(reachable_mariadb: MariaDB) -> MariaDB:
    """`tenantsite` with a table, and the site's user as wp-config.php names it."""
    reachable_mariadb.sql(
        "CREATE DATABASE IF NOT EXISTS tenantsite;"
        "CREATE TABLE IF NOT EXISTS tenantsite.wp_posts (id INT PRIMARY KEY, t TEXT);"
        "REPLACE INTO tenantsite.wp_posts VALUES (1, 'hello');"
        f"CREATE USER IF NOT EXISTS 'wp'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
        "GRANT ALL ON `tenantsite`.* TO 'wp'@'localhost';"
    )
    return reachable_mariadb


def php(value: str) -> str:
    """`value` as a PHP single-quoted literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def wp_config(db: MariaDB, **literals: str) -> str:
    """A wp-config.php; each keyword a define's PHP literal, replacing the default."""
    settings = {
        "DB_NAME": php("tenantsite"),
        "DB_USER": php("wp"),
        "DB_PASSWORD": php(DB_PASSWORD),
        "DB_HOST": php(f"localhost:{db.socket}"),
        **literals,
    }
    defines = "".join(f"define( '{k}', {v} );\n" for k, v in settings.items())
    return f"<?php\n{defines}$table_prefix = 'wp_';\n"


def make_site(root: Path, owner_uid: int, owner_gid: int, config: str | bytes) -> Path:
    """A site tree owned by its owner, with `config` as its wp-config.php."""
    (root / "wp-includes").mkdir(parents=True)
    (root / "index.php").write_text("<?php\n")
    (root / "wp-includes" / "version.php").write_text("<?php\n$wp_version = '6.8.1';\n")
    data = config.encode() if isinstance(config, str) else config
    (root / "wp-config.php").write_bytes(data)
    for path in [root, *root.rglob("*")]:
        os.chown(path, owner_uid, owner_gid, follow_symlinks=False)
    return root


# --- wp-config.php values are data ------------------------------------------------------

# (what, the PHP literal, what the refusal says); {plugins} is the hostile plugin dir
HOSTILE = [
    ("a line break", '"pw\\nplugin-dir={plugins}\\ndefault-auth=evil\\n"', "(\\x0a)"),
    ("a carriage return", '"pw\\rplugin-dir={plugins}\\rdefault-auth=evil"', "(\\x0d)"),
    ("a NUL", '"pw\\0plugin-dir={plugins}"', "(\\x00)"),
    ("a tab", '"pw\\tx"', "(\\x09)"),
    ("an escape", '"pw\\e]0;x\\x07"', "(\\x1b)"),
    ("a byte that is not UTF-8", '"pw\\xffx"', "not valid UTF-8"),
    ("1,025 characters", "'" + "x" * 1025 + "'", "longer than 1024 characters"),
]


@pytest.mark.parametrize("key", ["DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST"])
@pytest.mark.parametrize(("what", "literal", "refusal"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_value_in_wp_config_is_refused_naming_the_file_and_key(
    site_db: MariaDB,
    tenants: Tenants,
    evil_plugin: tuple[Path, Path],
    public_dir: Path,
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    key: str,
    what: str,
    literal: str,
    refusal: str,
) -> None:
    """Before, a line break in DB_PASSWORD became options of the client's option file
    (plugin-dir, default-auth) and root loaded the site owner's plugin."""
    plugins, marker = evil_plugin
    owner = tenants.owner
    root = make_site(
        public_dir / "site",
        owner.uid,
        owner.gid,
        wp_config(site_db, **{key: literal.format(plugins=plugins)}),
    )
    config = write_config(job=f'wordpress = "{root}"')
    good = make_site(public_dir / "good", owner.uid, owner.gid, wp_config(site_db))
    with config.path.open("a") as handle:  # another site on the host
        handle.write(f'\n[jobs.good]\ndestination = "test"\nwordpress = "{good}"\n')
    before = snapshot(public_dir)

    checked = cli(config.path, "check")
    ran = cli(config.path, "run-job", "www")
    other = cli(config.path, "run-job", "good")

    assert checked.returncode == 2, said(checked)
    assert ran.returncode == 1, said(ran)
    for result in (checked, ran):
        assert f"{root / 'wp-config.php'}" in said(result)
        assert f"{key} " in said(result) and refusal in said(result)
        assert "\x1b" not in said(result)
    assert not marker.exists()
    assert other.returncode == 0, said(other)  # the other site's backup is whole
    assert len(published(ftp_server)) == 1
    assert snapshot(public_dir) == before


def test_the_plugin_would_load_if_the_client_read_it(
    site_db: MariaDB, evil_plugin: tuple[Path, Path], tmp_path: Path
) -> None:
    """The hostile plugin of the table above is real: a client given those options
    loads it (so the refusal, not a broken plugin, is what keeps the marker away)."""
    plugins, marker = evil_plugin
    options = tmp_path / "my.cnf"
    options.write_text(f"[client]\npassword=pw\nplugin-dir={plugins}\ndefault-auth=evil\n")
    subprocess.run(
        ["mariadb", f"--defaults-extra-file={options}", f"--socket={site_db.socket}", "-e", "1"],
        capture_output=True,
        timeout=60,
    )
    assert marker.read_text().startswith("uid=")
    marker.unlink()


# values that are only unusual: they must reach the server exactly
ODD_BUT_FINE = [
    ("quotes, backslashes, =, # and ;", "p'w\"\\ =x #y ;z"),
    ("leading and trailing blanks", "  pw  "),
    ("a value like an option", "--plugin-dir=/tmp"),
    ("non-ASCII", "pässwörd ✓"),
]


@pytest.mark.parametrize(("what", "password"), ODD_BUT_FINE, ids=[o[0] for o in ODD_BUT_FINE])
def test_an_odd_password_reaches_the_server_as_written(
    site_db: MariaDB,
    tenants: Tenants,
    public_dir: Path,
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    what: str,
    password: str,
) -> None:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    user = f"odd{abs(hash(password)) % 10**6}"
    site_db.sql(
        f"CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED BY '{quoted}';"
        f"GRANT ALL ON `tenantsite`.* TO '{user}'@'localhost';"
    )
    owner = tenants.owner
    literals = {"DB_USER": php(user), "DB_PASSWORD": php(password)}
    root = make_site(public_dir / "site", owner.uid, owner.gid, wp_config(site_db, **literals))
    config = write_config(job=f'wordpress = "{root}"')
    ran = cli(config.path, "run-job", "www")
    assert ran.returncode == 0, said(ran)
    assert len(published(ftp_server)) == 1


def _members(config: Config, backup_id: str) -> dict[str, bytes]:
    raw = decompress(download_archive(config, backup_id))
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            if member.isfile() and (data := tar.extractfile(member)) is not None:
                members[member.name] = data.read()
    return members


def test_db_name_with_dots_and_slashes_is_a_name_never_a_path(
    site_db: MariaDB,
    tenants: Tenants,
    public_dir: Path,
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
) -> None:
    """Before, the spool file was `work / f"{name}.sql.zst"`: `../../../x` made root
    create (and truncate, chmod) a file three levels up, following links."""
    name = "../../../escaped"
    site_db.sql(
        f"CREATE DATABASE IF NOT EXISTS `{name}`; CREATE TABLE IF NOT EXISTS `{name}`.t (x INT);"
        f"GRANT ALL ON `{name}`.* TO 'wp'@'localhost';"
    )
    owner = tenants.owner
    root = make_site(
        public_dir / "site", owner.uid, owner.gid, wp_config(site_db, DB_NAME=php(name))
    )
    config = write_config(job=f'wordpress = "{root}"')
    before = snapshot(public_dir)
    ran = cli(config.path, "run-job", "www", "--json")
    assert ran.returncode == 0, said(ran)
    backup_id = json.loads(ran.stdout)["backup_id"]
    members = _members(config, backup_id)
    assert b"CREATE TABLE `t`" in members["databases/..%2F..%2F..%2Fescaped.sql"]
    assert not any("escaped" in p.name for p in tmp_path.rglob("*") if "ftp-root" not in str(p))
    assert snapshot(public_dir) == before
    assert not [p for p in (config.agent.spool_dir / "www").iterdir()]  # nothing left behind


# --- wp-config.php and the site root as files -------------------------------------------


def _shapes(root: Path, tenants: Tenants, other_site: Path) -> dict[str, Callable[[], None]]:
    config = root / "wp-config.php"

    def symlink() -> None:
        config.unlink()
        config.symlink_to(other_site / "wp-config.php")
        os.chown(config, tenants.owner.uid, tenants.owner.gid, follow_symlinks=False)

    def hard_link() -> None:  # root may link what the owner cannot: fs.protected_hardlinks
        config.unlink()
        os.link(other_site / "wp-config.php", config)

    def fifo() -> None:
        config.unlink()
        os.mkfifo(config)
        tenants.owner.chown(config)

    def device() -> None:
        config.unlink()
        os.mknod(config, 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
        tenants.owner.chown(config)

    def huge() -> None:
        with config.open("a") as handle:
            handle.write("// " + "x" * (1 << 20) + "\n")

    def root_link() -> None:  # the owner swaps their site root for a link to another's
        real = root.with_name("site-real")
        root.rename(real)
        root.symlink_to(other_site)
        tenants.owner.chown(root)

    return {
        "a symbolic link to another site's": symlink,
        "a hard link to another site's": hard_link,
        "a FIFO": fifo,
        "a device (/dev/zero)": device,
        "over 1 MiB": huge,
        "a site root that is the owner's link to another site": root_link,
    }


SHAPES = {
    "a symbolic link to another site's": "is a symbolic link",
    "a hard link to another site's": "not to the owner of its directory",
    "a FIFO": "is not a regular file",
    "a device (/dev/zero)": "is not a regular file",
    "over 1 MiB": "is larger than 1048576 bytes",
    "a site root that is the owner's link to another site": "only links of root are followed",
}


@pytest.mark.parametrize(("shape", "refusal"), SHAPES.items(), ids=list(SHAPES))
def test_wp_config_of_another_shape_is_refused_and_the_other_site_untouched(
    site_db: MariaDB,
    tenants: Tenants,
    public_dir: Path,
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    shape: str,
    refusal: str,
) -> None:
    """Before: a link made root read (and back up) the other site's settings and
    database into this site's backup, a FIFO blocked the run for ever (holding its
    lock), /dev/zero grew the agent's memory until MemoryError."""
    other = make_site(
        public_dir / "other", tenants.other.uid, tenants.other.gid, wp_config(site_db)
    )
    (other / "wp-config.php").chmod(0o600)  # the site's owner cannot read it
    root = make_site(public_dir / "site", tenants.owner.uid, tenants.owner.gid, wp_config(site_db))
    _shapes(root, tenants, other)[shape]()
    config = write_config(job=f'wordpress = "{root}"')
    before = snapshot(other)

    ran = subprocess.run(
        [*cli_argv(config), "run-job", "www"], capture_output=True, text=True, timeout=120
    )

    assert ran.returncode == 1, said(ran)
    assert refusal in said(ran)
    assert published(ftp_server) == []
    assert snapshot(other) == before


def cli_argv(config: Config) -> list[str]:
    import sys

    return [sys.executable, "-m", "backupagent", "--config", str(config.path)]


def test_the_site_database_clients_run_as_the_sites_owner(
    site_db: MariaDB,
    tenants: Tenants,
    public_dir: Path,
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
) -> None:
    """wp-config.php's settings are the owner's: the dump tool runs with their rights
    (a wrapper records its uid), and the backup is whole."""
    wrapper_dir = public_dir / "bin"
    wrapper_dir.mkdir()
    wrapper_dir.chmod(0o755)
    seen = public_dir / "uids"
    seen.touch()
    seen.chmod(0o666)
    for tool in ("mariadb-dump", "mariadb"):
        real = shutil.which(tool)
        script = wrapper_dir / tool
        script.write_text(f'#!/bin/sh\nid -u >> {seen}\nexec {real} "$@"\n')
        script.chmod(0o755)
    root = make_site(public_dir / "site", tenants.owner.uid, tenants.owner.gid, wp_config(site_db))
    config = write_config(job=f'wordpress = "{root}"')
    env = {**os.environ, "PATH": f"{wrapper_dir}:{os.environ['PATH']}"}
    ran = subprocess.run(
        [*cli_argv(config), "run-job", "www"], capture_output=True, text=True, timeout=120, env=env
    )
    assert ran.returncode == 0, said(ran)
    uids = set(seen.read_text().split())
    assert uids == {str(tenants.owner.uid)}, uids
    assert len(published(ftp_server)) == 1


# --- [discover]: one site's name never stops the others ----------------------------------


def test_a_discovered_site_with_a_bad_name_is_skipped_and_the_others_run(
    site_db: MariaDB,
    tenants: Tenants,
    public_dir: Path,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
) -> None:
    """Before, a control character in one site's directory name, or two names that
    make one job name, made the whole configuration invalid: every site's backup
    stopped (exit 2)."""
    sites = public_dir / "sites"
    sites.mkdir()
    for name in ("ok", "a b", "a-b", "evil\x1b]0;pwned\x07"):
        make_site(sites / name, tenants.owner.uid, tenants.owner.gid, wp_config(site_db))
    config = ftp_jobs_toml(
        tmp_path,
        ftp_server,
        None,
        agent=f'metrics_file = "{tmp_path}/metrics.prom"',
        tables=f'[defaults]\ndestination = "test"\n\n[discover]\nwordpress = "{sites}/*/"\n',
    )
    checked = cli(config, "check")
    listed = cli(config, "list", "--json")
    ran = cli(config, "run-job", "ok")

    assert checked.returncode == 0, said(checked)
    assert said(checked).count("is skipped") == 3
    assert "\x1b" not in said(checked) and "\\x1b" in said(checked)
    assert [j["job"] for j in json.loads(listed.stdout)["jobs"]] == ["ok"]
    assert ran.returncode == 0, said(ran)
    assert "backupagent_discover_skipped_sites 3" in (tmp_path / "metrics.prom").read_text()
