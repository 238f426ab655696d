"""What another local user can make of the agent's directories, its configuration files
and a local destination: nothing (README "Security"). Each case asserts the refusal names
the path and whose it is, that nothing of theirs changed, and that nothing they planted
ran or received a backup."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from backupagent.ftpserver import LocalFtpServer

from ..helpers import cli, snapshot
from .conftest import Tenants
from .jobs import ftp_jobs_toml, published, said

# --- the spool -----------------------------------------------------------------------


def _made_first(tmp: Path, tenants: Tenants) -> dict[str, tuple[Callable[[], None], str]]:
    """Ways another user gets at the spool before the agent runs: (set-up, refusal)."""
    spool = tmp / "backupagent"
    other = tenants.other

    def job_directory() -> None:  # mkdir /var/tmp/backupagent/www, before any run
        spool.mkdir()
        (spool / "www").mkdir()
        other.chown(spool, spool / "www")
        (spool / "www").chmod(0o777)

    def spool_directory() -> None:  # theirs above, root's below: they can swap it
        spool.mkdir()
        other.chown(spool)
        (spool / "www").mkdir()

    def link() -> None:  # the job's directory a link into their own
        theirs = tmp / "theirs"
        theirs.mkdir()
        other.chown(theirs)
        spool.mkdir()
        (spool / "www").symlink_to(theirs)
        other.chown(spool / "www")

    def open_parent() -> None:  # a world-writable directory without the sticky bit
        tmp.chmod(0o777)

    return {
        "the job's directory is theirs, mode 777": (job_directory, "belongs to uid"),
        "spool_dir is theirs": (spool_directory, "belongs to uid"),
        "the job's directory is their link": (link, "only links of root are followed"),
        "a directory above may be written by anyone": (open_parent, "may be written by others"),
    }


CASES = [
    "the job's directory is theirs, mode 777",
    "spool_dir is theirs",
    "the job's directory is their link",
    "a directory above may be written by anyone",
]


@pytest.mark.parametrize("case", CASES)
def test_a_spool_another_user_prepared_stops_the_run_and_gets_nothing(
    tenants: Tenants,
    public_dir: Path,
    tmp_path: Path,
    ftp_server: LocalFtpServer,
    site: Path,
    case: str,
) -> None:
    """Before, `spool_dir/JOB` was made with mkdir(exist_ok=True): a user who made it
    first (a `run-job` by hand is outside the unit's PrivateTmp) could swap the run's
    work directory and read another site's dump as it was written; the run said OK."""
    tmp = public_dir / "tmp"  # as /var/tmp: anyone may write, sticky
    tmp.mkdir()
    tmp.chmod(0o1777)
    set_up, refusal = _made_first(tmp, tenants)[case]
    set_up()
    config = ftp_jobs_toml(tmp_path, ftp_server, f'sources = ["{site}"]', spool=tmp / "backupagent")
    before = snapshot(public_dir)

    ran = cli(config, "run-job", "www")

    assert ran.returncode == 1, said(ran)
    assert refusal in said(ran) and "spool_dir" in said(ran)
    assert snapshot(public_dir) == before
    assert published(ftp_server) == []


def test_a_spool_in_a_sticky_directory_of_everyone_is_fine(
    public_dir: Path, tmp_path: Path, ftp_server: LocalFtpServer, site: Path
) -> None:
    """/var/tmp itself: anyone may write it, nobody may rename what is not theirs."""
    tmp = public_dir / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    config = ftp_jobs_toml(tmp_path, ftp_server, f'sources = ["{site}"]', spool=tmp / "backupagent")
    ran = cli(config, "run-job", "www")
    assert ran.returncode == 0, said(ran)
    assert oct((tmp / "backupagent" / "www").stat().st_mode & 0o777) == "0o700"


# --- configuration files --------------------------------------------------------------


def _files(tmp_path: Path, tenants: Tenants) -> dict[str, tuple[Callable[[Path, Path], None], str]]:
    """Ways a configuration file could be another user's: (set-up given jobs.toml and
    the included file, what the refusal names)."""
    other = tenants.other

    def include_theirs(main: Path, include: Path) -> None:
        other.chown(include)

    def include_group_writable(main: Path, include: Path) -> None:
        include.chmod(0o664)

    def include_directory_open(main: Path, include: Path) -> None:
        include.parent.chmod(0o777)

    def include_their_link(main: Path, include: Path) -> None:
        real = include.with_name("real.toml.txt")
        include.rename(real)
        include.symlink_to(real)
        other.chown(include)

    def main_theirs(main: Path, include: Path) -> None:
        other.chown(main)

    def password_theirs(main: Path, include: Path) -> None:
        other.chown(tmp_path / "ftp.pass")

    return {
        "an included file is another user's": (include_theirs, "belongs to uid"),
        "an included file is group-writable": (include_group_writable, "(mode 664)"),
        "the included files' directory is open to all": (include_directory_open, "mode 777"),
        "an included file is another user's link": (include_their_link, "symbolic link of uid"),
        "jobs.toml is another user's": (main_theirs, "belongs to uid"),
        "a password_file is another user's": (password_theirs, "password_file"),
    }


FILE_CASES = [
    "an included file is another user's",
    "an included file is group-writable",
    "the included files' directory is open to all",
    "an included file is another user's link",
    "jobs.toml is another user's",
    "a password_file is another user's",
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_a_configuration_file_another_user_could_change_is_refused(
    tenants: Tenants,
    tmp_path: Path,
    ftp_server: LocalFtpServer,
    site: Path,
    case: str,
) -> None:
    """Before, an include file owned by another user (or writable by others) was
    accepted: its `before` hook ran as root, and `check` said OK."""
    marker = tmp_path / "hook-ran"
    config = ftp_jobs_toml(tmp_path, ftp_server, f'sources = ["{site}"]', spool=tmp_path / "spool")
    config.write_text(
        config.read_text().replace("[agent]\n", '[agent]\ninclude = ["jobs.d/*.toml"]\n')
    )
    jobs_d = tmp_path / "jobs.d"
    jobs_d.mkdir()
    include = jobs_d / "evil.toml"
    include.write_text(
        f'[jobs.evil]\ndestination = "test"\nsources = ["{site}"]\nbefore = "touch {marker}"\n'
    )
    set_up, named = _files(tmp_path, tenants)[case]
    set_up(config, include)

    checked = cli(config, "check")
    ran = cli(config, "run-job", "evil")

    assert checked.returncode == 2, said(checked)
    assert named in checked.stderr
    assert "not trusted" in checked.stderr or "password_file" in checked.stderr
    assert ran.returncode == 2, said(ran)
    assert not marker.exists()
    assert published(ftp_server) == []


# --- a local destination ----------------------------------------------------------------


@pytest.mark.parametrize("case", ["open to all (mode 777)", "another user's"])
def test_a_local_destination_others_can_write_is_refused(
    tenants: Tenants, public_dir: Path, tmp_path: Path, site: Path, case: str
) -> None:
    """Before, the read-back after the rename opened the name again: a link planted in
    the window made the run's error show /etc/shadow's size and SHA-256."""
    target = public_dir / "nas"
    target.mkdir()
    if case.startswith("open"):
        target.chmod(0o777)
    else:
        tenants.other.chown(target)
    config = tmp_path / "jobs.toml"
    config.write_text(
        f"""
[agent]
state_dir = "{tmp_path}/state"
log_dir = "{tmp_path}/log"
spool_dir = "{tmp_path}/spool"

[destinations.nas]
type = "local"
path = "{target}"

[jobs.www]
destination = "nas"
sources = ["{site}"]
"""
    )
    ran = cli(config, "run-job", "www")
    assert ran.returncode == 1, said(ran)
    assert "is not private to the agent" in said(ran)
    assert "chmod 700" in said(ran)
    assert list(target.iterdir()) == []
