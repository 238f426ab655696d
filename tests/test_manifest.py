"""The manifest from a server that may lie: parsed strictly, one bad manifest never
stops the others, and its names never become paths outside the spool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backupagent import manifest
from backupagent.ftpserver import LocalFtpServer

from .conftest import WriteConfig
from .helpers import cli, snapshot

ID = "www-20261122T050000.000Z-abcdef"
GOOD = {
    "format": 1,
    "job": "www",
    "backup_id": ID,
    "created": "2026-11-22T05:00:00+00:00",
    "files": [{"name": f"{ID}.tar.zst.0001", "size": 10, "sha256": "a" * 64}],
    "archive": {"name": f"{ID}.tar.zst", "size": 10, "volume_size": 67108864},
}


def _with(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def _volume(**changes: object) -> list[dict]:
    return [{**GOOD["files"][0], **changes}]  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_with(files=_volume(name="/etc/passwd")), "is not a volume of"),
        (_with(files=_volume(name=f"../{ID}.tar.zst.0001")), "is not a volume of"),
        (_with(files=_volume(name=f"{ID}.tar.zst.0001/../../x")), "is not a volume of"),
        (
            _with(files=_volume(name="www-20200101T000000.000Z-000000.tar.zst")),
            "is not a volume of",
        ),
        (_with(files=_volume(size=-1)), "greater than or equal to 0"),
        (_with(files=_volume(size="10")), "valid integer"),
        (_with(files=_volume(size=True)), "valid integer"),
        (_with(files=_volume(sha256="abc")), "should match pattern"),
        (_with(files=[]), "at least 1 item"),
        (_with(format=2), "written by a newer backupagent"),
        (_with(backup_id="www-20200101T000000.000Z-000000"), "is not a volume of"),
        (b"[1, 2]", "not a JSON object"),
        (b"{not json", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b" " * (manifest.MAX_BYTES + 1), "over"),
    ],
)
def test_a_manifest_that_cannot_be_trusted_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(manifest.ManifestError, match=problem):
        manifest.parse(data, ID)


def test_a_good_manifest_and_an_old_one_without_format_are_read() -> None:
    assert manifest.parse(_with(), ID).size == 10
    old = {k: v for k, v in GOOD.items() if k not in ("format", "backup_id", "archive")}
    parsed = manifest.parse(json.dumps(old).encode(), ID)
    assert parsed.archive_name == f"{ID}.tar.zst.0001" and not parsed.encrypted


def test_one_bad_manifest_does_not_stop_listing_restore_or_verify(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    folder = ftp_server.root / "backups/site"
    (folder / f"{ID}.manifest.json").write_text("{ this is not json")  # an old, broken one
    listed = cli(config.path, "backups", "www")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()[1:] if "\t" in line]
    assert len(rows) == 2 and rows[1][0] == ID and rows[1][5].startswith("UNREADABLE")
    restored = cli(config.path, "restore", "www", "--to", str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert cli(config.path, "verify", "www").returncode == 0
    refused = cli(config.path, "restore", "www", "--backup", ID, "--to", str(tmp_path / "x"))
    assert refused.returncode == 1 and "unreadable manifest" in refused.stderr
    assert cli(config.path, "prune", "www", "--dry-run").returncode == 0
    assert "Traceback" not in listed.stderr + restored.stderr + refused.stderr


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_volume_names_never_become_paths_outside_the_spool(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path, command: str
) -> None:
    config = write_config()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("do not touch")
    name = "../../../victim/keep.txt"  # relative to spool_dir/www/restore-*/
    folder = ftp_server.root / "backups/site"
    folder.mkdir(parents=True)
    (folder / f"{ID}.manifest.json").write_bytes(_with(files=_volume(name=name)))
    before = snapshot(victim)
    extra = ["--to", str(tmp_path / "restored")] if command == "restore" else []
    result = cli(config.path, command, "www", "--backup", ID, *extra)
    assert result.returncode == 1
    assert "is not a volume of" in result.stdout + result.stderr
    assert snapshot(victim) == before


def test_a_server_sending_more_than_declared_is_cut_off(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """The manifest says 1,024 bytes; the server has 20 MiB: no more than that is kept."""
    from backupagent.destinations import open_destination
    from backupagent.incoming import VolumeMismatch, VolumeStream
    from backupagent.retrieve import list_backups

    config = write_config()
    folder = ftp_server.root / "backups/site"
    folder.mkdir(parents=True)
    (folder / f"{ID}.tar.zst.0001").write_bytes(b"\0" * (20 << 20))
    (folder / f"{ID}.manifest.json").write_bytes(_with(files=_volume(size=1024)))
    (backup,), _ = list_backups(config, "www")
    workdir = tmp_path / "restore-test"
    workdir.mkdir(mode=0o700)
    destination = open_destination(config, "www")
    kept: list[int] = []
    try:
        with VolumeStream(destination, backup.volumes, workdir) as stream:
            with pytest.raises(VolumeMismatch, match=r"more of .* than its manifest's size"):
                stream.read()
            kept = [p.stat().st_size for p in workdir.iterdir()]
            assert all(p.stat().st_mode & 0o777 == 0o600 for p in workdir.iterdir())
    finally:
        destination.close()
    assert sum(kept) <= 1024
    assert list(workdir.iterdir()) == []  # the stream leaves nothing behind


@pytest.mark.parametrize("how", ["others may write", "another user owns it"])
def test_a_spool_another_user_could_plant_links_in_is_refused(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path, how: str
) -> None:
    import pwd

    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    spool = config.agent.spool_dir / "www"
    if how == "others may write":
        spool.chmod(0o777)  # another user could plant a symlink at a .partial path
    else:
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        nobody = pwd.getpwnam("nobody")
        os.chown(spool, nobody.pw_uid, nobody.pw_gid)
    result = cli(config.path, "restore", "www", "--to", str(tmp_path / "restored"))
    assert result.returncode == 1
    said = "may be written by others (mode 777)" if how == "others may write" else "belongs to uid"
    assert said in result.stderr
    assert "spool_dir" in result.stderr


def test_a_restore_target_without_room_says_how_much_is_needed(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    import subprocess

    from .conftest import require_system

    require_system(os.geteuid() == 0, "mounting a small tmpfs needs root")
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0  # 300 kB of random bytes
    target = tmp_path / "small"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)], check=True)
    try:
        result = cli(config.path, "restore", "www", "--to", str(target))
        left = list(target.iterdir())
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=False)
    assert result.returncode == 1
    assert f"{target} has" in result.stderr and "bytes free, the backup needs" in result.stderr
    assert left == []


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_a_server_serving_a_crafted_volume_name_changes_nothing_outside(
    tmp_path: Path, command: str
) -> None:
    """A scripted server lists the manifest and serves whatever name is asked for:
    before the typed manifest, `../` in a volume name overwrote a file outside."""
    from .scripted import ScriptedFtp, ScriptedSession, jobs_toml

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("do not touch")
    name = "../" * 3 + "victim/keep.txt"  # from spool/www/<restore or verify dir>/
    data = _with(files=_volume(name=name, size=4))

    def retr(session: ScriptedSession, arg: str) -> str:
        return session.send_data(data if arg.endswith(".manifest.json") else b"evil")

    script = {"NLST": lambda s, _a: s.send_data(f"{ID}.manifest.json\r\n".encode()), "RETR": retr}
    with ScriptedFtp(script) as server:
        path = jobs_toml(tmp_path, server)
        before = snapshot(victim)
        extra = ["--to", str(tmp_path / "restored")] if command == "restore" else []
        result = cli(path, command, "www", "--backup", ID, *extra)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is not a volume of" in result.stdout + result.stderr
    assert snapshot(victim) == before
