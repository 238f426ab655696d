"""Whole runs against an in-process FTP server, in both modes."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backupagent.actions.backup import run_job
from backupagent.config import Config
from backupagent.destinations import open_destination
from backupagent.destinations.base import Hooks
from backupagent.destinations.ftp.session import FtpSession
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import read_events

from ..conftest import WriteConfig
from ..helpers import Watched, archived_tree, tree, unpack

REMOTE = "backups/site"


def remote_files(server: LocalFtpServer) -> list[str]:
    d = server.root / REMOTE
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def download(config, name: str) -> bytes:
    buf = io.BytesIO()
    with FtpSession(config.destination_of("www"), True) as s:
        s.change_directory("/" + REMOTE, create=False)
        s.download(name, buf.write)
    return buf.getvalue()


def download_archive(config, backup_id: str) -> bytes:
    """The whole archive: its volumes, in the manifest's order, joined."""
    meta = json.loads(download(config, f"{backup_id}.manifest.json"))
    return b"".join(download(config, v["name"]) for v in meta["files"])


@pytest.mark.parametrize("passive", [True, False])
def test_round_trip(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path, passive: bool
) -> None:
    config = write_config(job=f"passive = {str(passive).lower()}")
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    assert result.exit_code == 0
    archive = f"{result.backup_id}.tar.zst.0001"  # small: one volume
    manifest = f"{result.backup_id}.manifest.json"
    listing = f"{result.backup_id}.contents.zst"
    assert remote_files(ftp_server) == [listing, manifest, archive]

    data = download(config, archive)
    meta = json.loads(download(config, manifest))
    assert meta["job"] == "www"
    assert meta["files"] == [
        {
            "name": archive,
            "size": len(data),
            "sha256": __import__("hashlib").sha256(data).hexdigest(),
        }
    ]
    assert meta["archive"] == {
        "name": f"{result.backup_id}.tar.zst",
        "size": len(data),
        "volume_size": 64 << 20,
    }
    assert "password" not in json.dumps(meta).lower()

    unpack(data, tmp_path / "restored")
    restored = tree(tmp_path / "restored" / "files" / str(site).lstrip("/"))
    assert restored == archived_tree(site)
    assert restored["wp-content/uploads/latest"] == ("link", "big.bin")
    assert restored["dangling"] == ("link", "/nonexistent/target")

    events = read_events(result.log_path)
    modes = {e["mode"] for e in events if e["event"].startswith("FTP client command")}
    assert modes == {"passive" if passive else "active"}
    commands = [e["event"] for e in events if e["event"].startswith("FTP client command")]
    assert ("FTP client command: EPSV" in commands) is passive  # epsv = "auto"
    assert ("FTP client command: PORT" in " ".join(commands)) is not passive


def test_upload_order_temp_then_rename_then_size_then_manifest(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    result = run_job(write_config(), "www")
    archive = f"{result.backup_id}.tar.zst.0001"
    manifest = f"{result.backup_id}.manifest.json"
    commands = [
        e["event"].removeprefix("FTP client command: ")
        for e in read_events(result.log_path)
        if e["event"].startswith("FTP client command")
    ]
    order = [
        commands.index(c)
        for c in (
            f"STOR {archive}.partial",
            f"RNFR {archive}.partial",
            f"RNTO {archive}",
            f"SIZE {archive}",
            f"STOR {manifest}.partial",
            f"RNFR {manifest}.partial",
            f"RNTO {manifest}",
        )
    ]
    assert order == sorted(order)


def test_log_has_every_command_and_reply_and_masks_pass(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    result = run_job(write_config(), "www")
    raw = result.log_path.read_text()
    assert ftp_server.password not in raw
    events = read_events(result.log_path)
    ftp_events = [
        e for e in events if e["event"].startswith(("FTP client command: ", "FTP server reply: "))
    ]
    assert "FTP client command: PASS ****" in [e["event"] for e in ftp_events]
    assert ftp_events[0]["event"].startswith("FTP server reply: 220")
    for e in ftp_events:
        assert e["job"] == "www" and e["run_id"] == result.run_id and e["mode"] == "passive"
        assert set(e) >= {"timestamp", "level", "code"}
    # every command is answered: each command is followed by at least one reply
    kinds = ["c" if e["event"].startswith("FTP client") else "r" for e in ftp_events]
    assert "cc" not in "".join(kinds)
    replies = [e for e in ftp_events if e["event"].startswith("FTP server reply")]
    assert all(isinstance(e["code"], int) for e in replies)


def test_multiline_reply_is_one_event(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    with FtpSession(config.destination_of("www"), True) as s:
        s.ftp.sendcmd("FEAT")
        feat = [line for line in s.dialogue if line.text.startswith("211")]
    assert len(feat) == 1 and "\n" in feat[0].text and feat[0].text.endswith("211 End FEAT.")


def test_retention_keeps_newest_and_spares_other_jobs(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config(dest="")  # keep = 3
    d = ftp_server.root / REMOTE
    d.mkdir(parents=True)
    foreign = [
        "www-db-20200101T000000.000Z-aaaaaa.tar.zst",
        "www-db-20200101T000000.000Z-aaaaaa.manifest.json",
    ]  # another job's
    orphan = "www-20200101T000000.000Z-bbbbbb.tar.zst"  # no manifest: not counted, and old
    for name in [*foreign, orphan]:
        (d / name).write_bytes(b"x")
    ids = [run_job(config, "www").backup_id for _ in range(5)]
    names = remote_files(ftp_server)
    kept = sorted({n[: len(ids[0])] for n in names if n.startswith("www-2026")})
    assert kept == sorted(ids[-3:])
    for name in foreign:
        assert name in names
    assert orphan not in names  # removed once older than partial_grace_hours


def test_blocked_passive_fails_cleanly_with_verified_suggestion(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    ftp_server.block_passive()
    result = run_job(config, "www")
    assert result.exit_code == 1
    assert remote_files(ftp_server) == []  # nothing under a final name, no partial either
    assert result.suggestion is not None
    assert "Verified: a directory listing in active mode worked" in result.suggestion
    assert result.suggestion.endswith("under [jobs.www], set passive = false")
    events = read_events(result.log_path)
    last = events[-1]
    assert last["event"] == "suggestion"
    assert last["change"] == "passive = false" and last["verified"] is True
    assert any(f.startswith("FTP server reply: 229") for f in last["evidence"])
    # STOR was never sent (the data connection comes first in passive mode): the server
    # holds nothing, so no second login to clean up
    assert not any(e["event"] == "removing incomplete upload" for e in events)


def test_failure_after_rename_removes_the_final_archive(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    """Make the manifest upload fail: the already-renamed archive must go too."""
    config = write_config()
    # the volume's STOR goes through; the manifest's is refused as a forbidden name
    ftp_server.faults = {"STOR": [None, "553 Could not create file."]}
    result = run_job(config, "www")
    assert result.exit_code == 1
    assert "553 Could not create file." in (result.suggestion or "")
    assert remote_files(ftp_server) == []


def test_wrong_password_gives_credentials_advice(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    result = run_job(write_config(password="wrong"), "www")
    assert result.exit_code == 1
    assert "530" in result.suggestion
    assert "set passive" not in result.suggestion
    assert not any(e["event"].startswith("probing") for e in read_events(result.log_path))


def test_missing_source_fails_before_connecting(write_config: WriteConfig, site: Path) -> None:
    config = write_config()
    import shutil

    shutil.rmtree(site)
    result = run_job(config, "www")
    assert result.exit_code == 1
    assert "source not found" in result.error
    assert not any(e["event"].startswith("FTP") for e in read_events(result.log_path))


def test_agent_dirs_inside_a_source_are_not_archived(
    write_config: WriteConfig, site: Path, tmp_path: Path
) -> None:
    config = write_config()
    text = config.path.read_text()
    for key in ("state", "log", "spool"):
        text = text.replace(f'"{tmp_path}/{key}"', f'"{site}/.agent/{key}"')
    config.path.write_text(text)
    from backupagent.config import load_config

    result = run_job(load_config(config.path), "www")
    assert result.outcome == "success", result.warnings
    data = download_archive(config, result.backup_id)
    names = unpack(data, tmp_path / "out")
    assert not any("/.agent/" in n for n in names), names
    assert any(n.endswith("/.agent") for n in names)


@pytest.mark.parametrize("ftp_server", ["::1"], indirect=True)
@pytest.mark.parametrize(("passive", "verb"), [(True, "EPSV"), (False, "EPRT")])
def test_ipv6_uses_extended_commands(
    write_config: WriteConfig, ftp_server: LocalFtpServer, passive: bool, verb: str
) -> None:
    result = run_job(write_config(job=f"passive = {str(passive).lower()}"), "www")
    assert result.outcome == "success", result.error
    commands = [e["event"] for e in read_events(result.log_path)]
    assert any(c.startswith(f"FTP client command: {verb}") for c in commands)
    assert not any(
        c.startswith(("FTP client command: PASV", "FTP client command: PORT")) for c in commands
    )


def test_volumes_are_uploaded_while_the_archive_is_written(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    (site / "more.bin").write_bytes(os.urandom(400_000))  # incompressible: about 11 volumes
    config = write_config(job='volume_size = "64K"')
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    manifest = f"{result.backup_id}.manifest.json"
    meta = json.loads(download(config, manifest))
    names = [v["name"] for v in meta["files"]]
    assert len(names) >= 10
    assert names == [f"{result.backup_id}.tar.zst.{i:04d}" for i in range(1, len(names) + 1)]
    listing = f"{result.backup_id}.contents.zst"
    assert remote_files(ftp_server) == sorted([listing, manifest, *names])
    assert {v["size"] for v in meta["files"][:-1]} == {64 << 10}

    data = download_archive(config, result.backup_id)
    assert len(data) == meta["archive"]["size"]
    unpack(data, tmp_path / "restored")
    assert tree(tmp_path / "restored" / "files" / str(site).lstrip("/")) == archived_tree(site)

    # with two volumes at most on the spool, the first is published before the last is written
    events = [e["event"] for e in read_events(result.log_path)]
    assert events.index(f"FTP client command: RNTO {names[0]}") < events.index("archive written")


def _dump_after_upload(
    config: Config, uploaded: Callable[[int], bool], dump: Callable[[], list]
) -> dict[str, Any]:
    """run_job's arguments that replace the run's database dumps by `dump`, called once
    a volume whose size passes `uploaded(size)` is on the server (the real upload,
    through the configured destination, then the signal)."""
    seen = threading.Event()

    def destination(hooks: Hooks, cancel: threading.Event) -> Watched:
        def published(path: Path) -> None:
            if uploaded(path.stat().st_size):
                seen.set()

        return Watched(open_destination(config, "www", hooks, cancel), published)

    def dump_when_seen(site: object, work: Path, stop: threading.Event) -> list:
        assert seen.wait(60), "no such volume was uploaded while the dump ran"
        return dump()

    return {"destination": destination, "dumper": dump_when_seen}


def test_a_dump_failing_after_volumes_were_uploaded_removes_them(
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    site: Path,
) -> None:
    """Dumps run while files are archived: a late failure must not leave volumes behind."""
    from backupagent.diagnosis import Category, Diagnosis
    from backupagent.sources.databases import DumpFailed

    def fail() -> list:
        raise DumpFailed(Diagnosis(Category.DB_LOGIN, "access denied", (), "fix it"))

    (site / "more.bin").write_bytes(os.urandom(400_000))
    config = write_config(job='volume_size = "64K"')
    result = run_job(config, "www", **_dump_after_upload(config, lambda size: True, fail))
    assert result.outcome == "failed" and result.error == "access denied"
    events = [e["event"] for e in read_events(result.log_path)]
    assert any(e.startswith("FTP client command: RNTO www-") for e in events)
    assert remote_files(ftp_server) == []
    assert events[-1] == "suggestion"


def test_while_dumps_finish_the_written_part_is_sent(
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    site: Path,
    tmp_path: Path,
) -> None:
    """Files done, dumps still running: the volume in progress is cut and uploaded meanwhile."""
    (site / "more.bin").write_bytes(os.urandom(150_000))
    # the dump ends (with nothing) once the cut, short volume is on the server
    config = write_config(job='volume_size = "64K"')
    result = run_job(
        config, "www", **_dump_after_upload(config, lambda size: size < 64 << 10, list)
    )
    assert result.outcome == "success", result.error
    meta = json.loads(download(config, f"{result.backup_id}.manifest.json"))
    sizes = [v["size"] for v in meta["files"]]
    assert any(size < 64 << 10 for size in sizes[:-1]), sizes  # the cut, before the end
    unpack(download_archive(config, result.backup_id), tmp_path / "restored")
    assert tree(tmp_path / "restored" / "files" / str(site).lstrip("/")) == archived_tree(site)


def test_a_killed_runs_spool_and_orphan_volume_are_cleaned_up(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    config = write_config()
    killed = config.agent.spool_dir / "www" / "www-20200101T000000.000Z-abcdef"
    killed.mkdir(parents=True)
    (killed / "www-20200101T000000.000Z-abcdef.tar.zst.0001").write_bytes(b"half a volume")
    folder = ftp_server.root / REMOTE
    folder.mkdir(parents=True)
    orphan = folder / "www-20200101T000000.000Z-abcdef.tar.zst.0001"  # renamed, no manifest
    orphan.write_bytes(b"x")
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    assert not killed.exists()
    assert not orphan.exists()


def test_a_full_spool_names_the_place_and_the_key(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    import subprocess

    from ..conftest import require_system

    require_system(os.geteuid() == 0, "mounting a small tmpfs needs root")
    config = write_config()
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(spool)], check=True)
    try:
        result = run_job(config, "www")  # the site holds 300 kB of random bytes
    finally:
        subprocess.run(["umount", "--lazy", str(spool)], check=False)
    assert result.outcome == "failed"
    assert "the spool is full" in result.error and "[agent] spool_dir" in result.error
    assert str(config.path) in result.error
    assert remote_files(ftp_server) == []


# --- hooks -----------------------------------------------------------------------------


def _hooks(tmp_path: Path, before: str = "", after: str = "", on_failure: str = "") -> str:
    """Each hook appends `NAME RESULT BACKUP_ID ERROR` to hooks.log, then runs its extra."""
    record = 'echo "$BACKUPAGENT_HOOK|$BACKUPAGENT_RESULT|$BACKUPAGENT_BACKUP_ID|$BACKUPAGENT_ERROR" >> {log}'
    log = tmp_path / "hooks.log"
    lines = []
    for name, extra in (("before", before), ("after", after), ("on_failure", on_failure)):
        command = record.format(log=log) + (f"; {extra}" if extra else "")
        lines.append(f"{name} = {json.dumps(command)}")
    return "\n".join(lines)


def _hook_log(tmp_path: Path) -> list[list[str]]:
    return [line.split("|") for line in (tmp_path / "hooks.log").read_text().splitlines()]


def test_before_runs_first_and_after_sees_the_backup(
    write_config: WriteConfig, tmp_path: Path, site: Path
) -> None:
    marker = site / "maintenance.flag"
    config = write_config(job=_hooks(tmp_path, before=f"touch {marker}", after=f"rm {marker}"))
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    assert _hook_log(tmp_path) == [
        ["before", "running", "", ""],
        ["after", "success", str(result.backup_id), ""],
    ]
    archived = unpack(download_archive(config, str(result.backup_id)), tmp_path / "out")
    assert any(name.endswith("/maintenance.flag") for name in archived)  # before the walk
    assert not marker.exists()
    events = read_events(result.log_path)
    assert [e["event"] for e in events if e.get("hook")].count("the after hook ended") == 1


def test_a_failing_before_fails_the_run_with_its_own_verdict(
    write_config: WriteConfig, tmp_path: Path, ftp_server: LocalFtpServer
) -> None:
    config = write_config(job=_hooks(tmp_path, before="echo 'wp: command not found' >&2; exit 127"))
    result = run_job(config, "www")
    assert result.outcome == "failed"
    assert result.error == "the before hook failed (exit code 127); the backup did not start"
    assert result.suggestion is not None and "wp: command not found" in result.suggestion
    assert "passive" not in result.suggestion.split("Advice:")[0]
    # after is for undoing what before did: it did nothing; on_failure hears of it
    assert [row[:2] for row in _hook_log(tmp_path)] == [
        ["before", "running"],
        ["on_failure", "failed"],
    ]
    assert not (ftp_server.root / "backups").exists()  # no login, no upload
    (suggestion,) = [e for e in read_events(result.log_path) if e["event"] == "suggestion"]
    assert suggestion["category"] == "hook_failed"


def test_a_failed_run_still_runs_after_then_on_failure(
    write_config: WriteConfig, tmp_path: Path, ftp_server: LocalFtpServer
) -> None:
    ftp_server.block_passive()
    config = write_config(job=_hooks(tmp_path))
    result = run_job(config, "www")
    assert result.outcome == "failed"
    rows = _hook_log(tmp_path)
    assert [row[:3] for row in rows] == [
        ["before", "running", ""],
        ["after", "failed", ""],
        ["on_failure", "failed", ""],
    ]
    assert rows[2][3] == result.error


def test_a_failing_after_hook_is_a_warning(write_config: WriteConfig, tmp_path: Path) -> None:
    config = write_config(job=_hooks(tmp_path, after="exit 1"))
    result = run_job(config, "www")
    assert result.outcome == "warning" and result.exit_code == 0
    assert "after hook: the after hook failed (exit code 1)" in result.warnings
    assert [row[0] for row in _hook_log(tmp_path)] == ["before", "after"]


def test_hooks_in_defaults_apply_to_every_job(tmp_path: Path, write_config: WriteConfig) -> None:
    config = write_config()
    text = config.path.read_text()
    defaults = "[defaults]\n" + _hooks(tmp_path) + "\n"
    config.path.write_text(text.replace("[destinations.test]", defaults + "[destinations.test]"))
    from backupagent.config import load_config

    result = run_job(load_config(config.path), "www")
    assert result.outcome == "success", result.error
    assert [row[0] for row in _hook_log(tmp_path)] == ["before", "after"]


def test_logs_shows_what_a_hook_printed(write_config: WriteConfig, tmp_path: Path) -> None:
    from ..helpers import cli

    config = write_config(job='before = "echo flushing the cache of $BACKUPAGENT_JOB"')
    assert run_job(config, "www").outcome == "success"
    shown = cli(config.path, "logs", "www").stdout
    assert "hook output  hook=before line=flushing the cache of www" in shown
