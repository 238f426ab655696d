"""`type = "sftp"` against OpenSSH's sshd, started per test on a loopback port with its
own host key and config (tests/sshd.py): key and password logins, host keys that are
wrong, unknown or in known_hosts, a refused directory, sshd killed mid-upload and
restarted, and the commands that read backups back."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.config import Config, SftpDestination, load_config
from backupagent.destinations.base import DestinationError, answers_ssh
from backupagent.destinations.sftp import Sftp, SftpFailed
from backupagent.logging import read_events
from backupagent.retention import complete_backups

from ..conftest import require_system
from ..helpers import agent_table, cli, tree
from ..sshd import Sshd, missing, running_sshd


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    why = missing()
    require_system(why is None, why or "")
    with running_sshd(tmp_path / "sshd") as server:
        yield server


def sftp_config(tmp_path: Path, site: Path, server: Sshd, keys: str, job: str = "") -> Config:
    text = f"""
{agent_table(tmp_path)}
[destinations.box]
type = "sftp"
host = "127.0.0.1"
port = {server.port}
user = "{server.user}"
directory = "{server.root}/backups"
keep = 2
retry_wait = 0.2
{keys}

[jobs.www]
destination = "box"
sources = ["{site}"]
exclude = ["wp-content/cache/", "*.log"]
{job}
"""
    (tmp_path / "jobs.toml").write_text(text)
    return load_config(tmp_path / "jobs.toml")


def key_login(server: Sshd) -> str:
    return f'key_file = "{server.key_file}"\nhost_key = "{server.fingerprint}"'


def test_a_job_backs_up_over_sftp_and_the_commands_read_it_back(
    tmp_path: Path, site: Path, sshd: Sshd
) -> None:
    config = sftp_config(tmp_path, site, sshd, key_login(sshd), job='volume_size = "64K"')
    results = [run_job(config, "www") for _ in range(3)]
    assert [r.outcome for r in results] == ["success"] * 3, [r.error for r in results]
    names = sorted(p.name for p in (sshd.root / "backups").iterdir())
    assert [b.backup_id for b in complete_backups("www", names)] == [
        r.backup_id for r in results[1:]
    ]  # keep = 2, and nothing temporary left
    assert not any(n.endswith(".partial") for n in names)
    listing = cli(config.path, "backups", "www")
    assert listing.returncode == 0 and results[-1].backup_id in listing.stdout
    verified = cli(config.path, "verify", "www")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    restored = cli(config.path, "restore", "www", "--to", str(tmp_path / "back"))
    assert restored.returncode == 0, restored.stderr
    assert tree(tmp_path / "back" / "files" / str(site).lstrip("/"))["index.php"][0] == "file"
    assert cli(config.path, "prune", "www", "--dry-run").returncode == 0
    checked = cli(config.path, "diagnose", "www")
    assert checked.returncode == 0 and "write test" in checked.stdout, checked.stdout


def test_a_password_login(tmp_path: Path, site: Path) -> None:
    why = missing()
    require_system(why is None, why or "")
    with running_sshd(tmp_path / "sshd", password="s3cret-Pass") as server:
        (tmp_path / "ssh.pass").write_text("s3cret-Pass\n")
        keys = f'password_file = "{tmp_path}/ssh.pass"\nhost_key = "{server.fingerprint}"'
        config = sftp_config(tmp_path, site, server, keys)
        result = run_job(config, "www")
        assert result.outcome == "success", result.error
        (tmp_path / "ssh.pass").write_text("wrong\n")
        refused = run_job(config, "www")
        assert refused.outcome == "failed"
        assert "refused the login" in (refused.error or "")
        assert "password_file" in (refused.suggestion or "")


@pytest.mark.parametrize("pinned", ["another key", "nothing", "known_hosts"])
def test_a_host_key_not_pinned_is_refused_with_its_fingerprint(
    tmp_path: Path, site: Path, sshd: Sshd, pinned: str
) -> None:
    keys = f'key_file = "{sshd.key_file}"'
    if pinned == "another key":
        keys += '\nhost_key = "SHA256:' + "A" * 43 + '"'
    elif pinned == "known_hosts":  # a known_hosts file that names another key
        other = tmp_path / "other_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
        )
        public = other.with_suffix(".pub").read_text()
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {public}")
        keys += f'\nknown_hosts = "{tmp_path}/known_hosts"'
    config = sftp_config(tmp_path, site, sshd, keys)
    result = run_job(config, "www")
    assert result.outcome == "failed"
    assert f'host_key = "{sshd.fingerprint}"' in (result.suggestion or "")
    assert not (sshd.root / "backups").exists()  # refused before anything was done
    events = read_events(result.log_path)
    assert events[-1]["event"] == "suggestion" and events[-1]["category"] == "ssh_host_key"
    checked = cli(config.path, "diagnose", "www")
    assert checked.returncode == 1 and f'host_key = "{sshd.fingerprint}"' in checked.stdout
    assert not any("retrying" in e["event"] for e in events)  # not a transient failure


def test_a_known_hosts_file_that_names_the_key_is_accepted(
    tmp_path: Path, site: Path, sshd: Sshd
) -> None:
    public = Path(str(sshd.host_key) + ".pub").read_text()
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {public}")
    keys = f'key_file = "{sshd.key_file}"\nknown_hosts = "{tmp_path}/known_hosts"'
    result = run_job(sftp_config(tmp_path, site, sshd, keys), "www")
    assert result.outcome == "success", result.error


def test_a_directory_the_user_may_not_write_is_a_path_problem(tmp_path: Path, site: Path) -> None:
    why = missing()
    require_system(why is None, why or "")
    with running_sshd(tmp_path / "sshd", password="s3cret-Pass") as server:
        locked = server.root / "locked"
        locked.mkdir(mode=0o755)  # root's: the test user may not write in it
        (tmp_path / "ssh.pass").write_text("s3cret-Pass\n")
        keys = f'password_file = "{tmp_path}/ssh.pass"\nhost_key = "{server.fingerprint}"'
        config = sftp_config(tmp_path, site, server, keys)
        text = config.path.read_text().replace(f"{server.root}/backups", f"{locked}/backups")
        config.path.write_text(text)
        result = run_job(load_config(config.path), "www")
        assert result.outcome == "failed"
        assert "refused a file operation" in (result.error or "")
        assert "directory" in (result.suggestion or "")
        assert list(locked.iterdir()) == []


def test_sshd_killed_mid_upload_and_restarted_resumes(tmp_path: Path, sshd: Sshd) -> None:
    """The upload continues from the size the server holds, not from the start."""
    source = tmp_path / "volume"
    data = os.urandom(48 << 20)
    source.write_bytes(data)
    settings = SftpDestination(
        type="sftp",
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        key_file=sshd.key_file,
        host_key=sshd.fingerprint,
        directory=str(sshd.root / "backups"),
        retry_wait=0.5,  # how soon it retries cannot change whether it resumes
    )
    destination = Sftp("box", settings)
    halfway, restarted = threading.Event(), threading.Event()
    sent: list[int] = []

    def progress(n: int) -> None:
        sent.append(n)
        if sum(sent) > len(data) // 3:
            halfway.set()

    def crash_and_restart() -> None:
        halfway.wait(60)
        sshd.kill()
        sshd.start()
        restarted.set()

    crasher = threading.Thread(target=crash_and_restart)
    crasher.start()
    try:
        destination.publish_file(
            source, "v.tar.zst.0001", hashlib.sha256(data).hexdigest(), progress
        )
    finally:
        crasher.join()
        destination.close()
    assert restarted.is_set()
    assert (sshd.root / "backups" / "v.tar.zst.0001").read_bytes() == data
    # resumed: a third was acknowledged before the crash, so starting over would make
    # it 1.33 times the file or more; resuming, only what was in flight goes twice
    assert len(data) <= sum(sent) < 1.2 * len(data)


def test_answers_ssh_tells_an_ssh_server_from_an_ftp_one(sshd: Sshd, ftp_server) -> None:
    assert answers_ssh("127.0.0.1", sshd.port)
    assert not answers_ssh("127.0.0.1", ftp_server.port, timeout=2)


def test_an_unreachable_server_is_a_host_problem(tmp_path: Path, site: Path, sshd: Sshd) -> None:
    port = sshd.port
    sshd.kill()
    config = sftp_config(tmp_path, site, sshd, key_login(sshd))
    result = run_job(config, "www")
    assert result.outcome == "failed"
    assert f"no SSH connection to 127.0.0.1:{port}" in (result.error or "")
    direct = Sftp("box", config.destinations["box"])  # type: ignore[arg-type]
    try:
        with pytest.raises(SftpFailed):
            direct.check()
    finally:
        direct.close()


def test_sshd_killed_mid_download_and_restarted_resumes(tmp_path: Path, sshd: Sshd) -> None:
    data = os.urandom(48 << 20)
    (sshd.root / "backups").mkdir()
    (sshd.root / "backups" / "v.tar.zst.0001").write_bytes(data)
    settings = SftpDestination(
        type="sftp",
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        key_file=sshd.key_file,
        host_key=sshd.fingerprint,
        directory=str(sshd.root / "backups"),
        retry_wait=0.5,  # how soon it retries cannot change whether it resumes
    )
    destination = Sftp("box", settings)
    target = tmp_path / "v.tar.zst.0001"
    partial = target.with_name(target.name + ".partial")

    def crash_when_a_third_is_here() -> None:
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > len(data) // 3):
            assert time.monotonic() < deadline
            time.sleep(0.005)  # polling a file another thread writes; no event to wait on
        sshd.kill()
        sshd.start()

    crasher = threading.Thread(target=crash_when_a_third_is_here)
    crasher.start()
    try:
        destination.download("v.tar.zst.0001", target, len(data))
    finally:
        crasher.join()
        destination.close()
    assert target.read_bytes() == data


def test_sigterm_mid_upload_aborts_and_leaves_nothing(
    tmp_path: Path, site: Path, sshd: Sshd
) -> None:
    (site / "big.bin").write_bytes(os.urandom(64 << 20))
    config = sftp_config(tmp_path, site, sshd, key_login(sshd), job='volume_size = "8M"')
    argv = [sys.executable, "-m", "backupagent", "--config", str(config.path), "run-job", "www"]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    backups = sshd.root / "backups"
    deadline = time.monotonic() + 60
    while not (backups.exists() and any(backups.iterdir())):  # an upload has begun
        assert time.monotonic() < deadline and agent.poll() is None
        time.sleep(0.01)  # watching another process's output directory
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=60)
    assert agent.returncode == 1, out
    assert "ABORTED" in out
    assert list(backups.iterdir()) == []


def test_a_listing_past_its_bound_is_refused(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    from backupagent.destinations import sftp

    monkeypatch.setattr(sftp, "MAX_NAMES", 50)  # the bound, scaled down: 1,000,000 in use
    (sshd.root / "backups").mkdir()
    for i in range(60):
        (sshd.root / "backups" / f"f{i}").touch()
    settings = SftpDestination(
        type="sftp",
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        key_file=sshd.key_file,
        host_key=sshd.fingerprint,
        directory=str(sshd.root / "backups"),
    )
    destination = Sftp("box", settings)
    try:
        with pytest.raises(DestinationError, match="listing of over 50 names"):
            destination.names()
    finally:
        destination.close()


# cryptography 51 warns whenever a DSA class is named, as asyncssh's type hints do at
# import; the installed cryptography may be older, so that behaviour is put in place here
_DSA_WARNS = """
import sys
import warnings
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.utils import CryptographyDeprecationWarning
names = {n: getattr(dsa, n) for n in dir(dsa) if n.startswith("DSA")}
for n in names:
    delattr(dsa, n)
def warned(name):
    if name not in names:
        raise AttributeError(name)
    if not sys._getframe(1).f_globals.get("__name__", "").startswith("cryptography"):
        warnings.warn("DSA is deprecated and support will be removed in a future release.",
                      CryptographyDeprecationWarning, stacklevel=2)
    return names[name]
dsa.__getattr__ = warned
"""


def test_importing_the_sftp_destination_prints_no_library_warning() -> None:
    """Not the 10 `DSA is deprecated` blocks per command that reached cron mail."""
    shown = subprocess.run(
        [sys.executable, "-W", "always", "-c",
         _DSA_WARNS + "import asyncssh.crypto.misc as m; print('warns' if m else '')"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "DSA is deprecated" in shown.stderr  # the stand-in behaves as cryptography 51
    quiet = subprocess.run(
        [sys.executable, "-W", "always", "-c",
         _DSA_WARNS + "import backupagent.destinations.sftp"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
