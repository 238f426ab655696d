"""`type = "local"`: a run into a directory, the commands that read it back, a full
disk and an unmounted NAS (both on real tmpfs mounts, which need root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.config import Config, load_config
from backupagent.retention import complete_backups

from ..conftest import require_system
from ..helpers import agent_table, cli, snapshot, tree


def local_config(tmp_path: Path, site: Path, path: Path, extra: str = "", job: str = "") -> Config:
    text = f"""
{agent_table(tmp_path)}
[destinations.nas]
type = "local"
path = "{path}"
keep = 2
{extra}

[jobs.www]
destination = "nas"
sources = ["{site}"]
exclude = ["wp-content/cache/", "*.log"]
{job}
"""
    (tmp_path / "jobs.toml").write_text(text)
    return load_config(tmp_path / "jobs.toml")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (a small disk that fills up)."""
    require_system(os.geteuid() == 0, "mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_job_backs_up_into_a_directory_and_the_commands_read_it_back(
    tmp_path: Path, site: Path
) -> None:
    nas = tmp_path / "nas" / "backups"
    config = local_config(tmp_path, site, nas)
    results = [run_job(config, "www") for _ in range(3)]
    assert [r.outcome for r in results] == ["success"] * 3, [r.error for r in results]
    names = sorted(p.name for p in nas.iterdir())
    assert [b.backup_id for b in complete_backups("www", names)] == [
        r.backup_id for r in results[1:]
    ]  # keep = 2
    assert all(os.stat(nas / n).st_mode & 0o777 == 0o600 for n in names)
    listing = cli(config.path, "backups", "www")
    assert listing.returncode == 0 and results[-1].backup_id in listing.stdout
    assert cli(config.path, "verify", "www").returncode == 0
    restored = cli(config.path, "restore", "www", "--to", str(tmp_path / "back"))
    assert restored.returncode == 0, restored.stderr
    assert tree(tmp_path / "back" / "files" / str(site).lstrip("/"))["index.php"][0] == "file"
    dry = cli(config.path, "prune", "www", "--dry-run")
    assert dry.returncode == 0 and "keep" in dry.stdout
    check = cli(config.path, "diagnose", "www")
    assert check.returncode == 0 and "write test" in check.stdout


def test_require_mount_refuses_a_directory_on_the_root_filesystem(
    tmp_path: Path, site: Path
) -> None:
    """The NAS is not mounted: nothing is created or written, and the advice says why."""
    base = tmp_path if _mount_of(tmp_path) == "/" else Path(tempfile.mkdtemp(dir="/var/tmp"))
    require_system(_mount_of(base) == "/", f"{base} is not on the root filesystem")
    try:
        nas = base / "mnt" / "nas" / "backups"
        (base / "mnt" / "nas").mkdir(parents=True)
        before = snapshot(base / "mnt")
        config = local_config(tmp_path, site, nas, extra="require_mount = true")
        result = run_job(config, "www")
        assert result.outcome == "failed"
        assert "not on a mounted filesystem" in (result.error or "")
        assert "require_mount" in (result.suggestion or "")
        assert snapshot(base / "mnt") == before  # not even the directory was made
    finally:
        if base != tmp_path:
            shutil.rmtree(base)


def test_require_mount_accepts_a_mounted_filesystem(
    tmp_path: Path, site: Path, tmpfs: Path
) -> None:
    config = local_config(
        tmp_path, site, tmpfs / "backups", extra="require_mount = true", job='volume_size = "64K"'
    )
    (site / "wp-content/uploads/big.bin").unlink()  # the rest fits in 1 MiB
    result = run_job(config, "www")
    assert result.outcome == "success", result.error


def test_a_full_disk_is_named_and_leaves_nothing_half_published(
    tmp_path: Path, site: Path, tmpfs: Path
) -> None:
    (site / "big2.bin").write_bytes(os.urandom(2 << 20))  # more than the tmpfs holds
    config = local_config(tmp_path, site, tmpfs / "backups", job='volume_size = "256K"')
    result = run_job(config, "www")
    assert result.outcome == "failed"
    assert result.error is not None and "is full" in result.error
    assert "keep" in (result.suggestion or "")
    assert list((tmpfs / "backups").iterdir()) == []  # no volume, no temporary file
    events = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert events[-1]["event"] == "suggestion"
    assert events[-1]["category"] == "server_out_of_space"


def test_a_read_only_path_gets_the_systemd_drop_in(tmp_path: Path, site: Path, tmpfs: Path) -> None:
    """As under the shipped units (ProtectSystem=strict): EROFS names ReadWritePaths=
    with the destination's path, not "give this user write access"."""
    (tmpfs / "backups").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    config = local_config(tmp_path, site, tmpfs / "backups")
    result = run_job(config, "www")
    assert result.outcome == "failed"
    assert result.error is not None and "read-only" in result.error
    assert f"ReadWritePaths={tmpfs / 'backups'}" in (result.suggestion or "")
    assert "write access" not in (result.suggestion or "")
    assert list((tmpfs / "backups").iterdir()) == []


def _mount_of(path: Path) -> str:
    from backupagent.destinations.local import mount_point

    return str(mount_point(path))


def test_a_file_swapped_after_its_rename_is_refused_and_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user who could write the directory plants a link in the window after
    the rename: the read-back is through the descriptor that wrote the file, and the
    name is checked to hold that very file. (Before: the name was opened again, and the
    error showed the size and SHA-256 of whatever the link led to.)"""
    import hashlib

    from backupagent.destinations import local
    from backupagent.destinations.base import DestinationError

    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:secret-hash:19000::::::\n")
    target = tmp_path / "nas"
    target.mkdir(mode=0o700)
    real_replace = os.replace

    def replace_then_swap(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        os.unlink(dst)
        os.symlink(secret, dst)

    directory = local.LocalDirectory(target)
    data = b"backup bytes"
    monkeypatch.setattr(local.os, "replace", replace_then_swap)
    with pytest.raises(DestinationError, match="was replaced by another file") as raised:
        directory.publish_bytes(data, "www-x.manifest.json")
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in str(raised.value)
    assert str(len(secret.read_bytes())) not in str(raised.value)
