"""Incremental jobs end to end (FTP, pyftpdlib): a full and three incrementals with
adds, changes, deletes and type changes, each point restored and compared; a missing
parent gives a full; a failed incremental leaves the chain usable; chains pruned whole."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest

from backupagent.actions import prune
from backupagent.actions.backup import run_job
from backupagent.config import Retention, load_config
from backupagent.ftpserver import LocalFtpServer
from backupagent.logging import read_events

from ..conftest import WriteConfig
from ..helpers import agent_table, cli, ftp_table

INCREMENTAL = "incremental = true\nfull_every = 10"


def state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below `root`: kind, content or link target, mode, mtime (seconds)."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("wp-content/cache") or rel.endswith(".log"):
            continue  # the job excludes them
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
        else:
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), int(st.st_mtime))
    return out


def restored(config_path: Path, backup_id: str, into: Path, site: Path) -> dict:
    done = cli(
        config_path, "restore", "www", "--backup", backup_id, "--to", str(into), "--outside-links"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return state(into / "files" / str(site).lstrip("/"))


def test_a_chain_restores_every_point_exactly(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    config = write_config(job=INCREMENTAL)
    points: list[tuple[str, dict]] = []

    def backup(kind: str) -> None:
        result = run_job(config, "www")
        assert result.outcome == "success", result.error
        kinds = [e for e in read_events(result.log_path) if e["event"] == "backup kind"]
        assert kinds[0]["kind"] == kind
        points.append((result.backup_id or "", state(site)))

    backup("full")
    (site / "new.txt").write_text("added\n")  # an add, a change, a delete
    (site / "index.php").write_text("<?php echo 'changed, and longer';\n")
    (site / "keep.log.txt").unlink()
    os.link(site / "index.php", site / "hard.txt")  # a new name for an unchanged file
    backup("incremental")
    (site / "wp-content/uploads/big.bin").unlink()  # a file becomes a directory
    (site / "wp-content/uploads/big.bin").mkdir()
    (site / "wp-content/uploads/big.bin/inside.txt").write_text("inside\n")
    (site / "new.txt").unlink()  # a file becomes a symlink
    (site / "new.txt").symlink_to("index.php")
    os.chmod(site / "index.php", 0o600)  # only the mode
    os.utime(site / "wp-content/uploads/café menu.txt", (1_600_000_000, 1_600_000_000))
    backup("incremental")
    (site / "wp-content/uploads/big.bin/inside.txt").rename(site / "moved.txt")  # a rename
    (site / "empty").rmdir()  # a directory goes
    backup("incremental")

    for number, (backup_id, expected) in enumerate(points):
        got = restored(config.path, backup_id, tmp_path / f"point{number}", site)
        assert got == expected, f"point {number} ({backup_id}) differs"
        if number >= 1:  # the hard link is restored as one, not as a copy
            back = tmp_path / f"point{number}" / "files" / str(site).lstrip("/")
            assert (back / "hard.txt").stat().st_ino == (back / "index.php").stat().st_ino

    for backup_id, expected in points:  # `files` lists each point as restore makes it
        shown = cli(config.path, "files", "www", "--backup", backup_id, "--json")
        members = json.loads(shown.stdout)["members"]
        paths = {m["path"] for m in members if m["path"].startswith(f"{site}/")}
        assert paths == {f"{site}/{rel}" for rel in expected}, backup_id
    partial = tmp_path / "partial"  # one directory of the point before last, from its chain
    done = cli(
        config.path, "restore", "www", "--backup", points[2][0], "--to", str(partial),
        "--include", "wp-content/uploads",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    uploads = {k: v for k, v in points[2][1].items() if k.startswith("wp-content/uploads/")}
    got = state(partial / "files" / str(site).lstrip("/"))
    assert {k: v for k, v in got.items() if k.startswith("wp-content/uploads/")} == uploads
    assert not [k for k in got if not k.startswith("wp-content")]

    listing = cli(config.path, "backups", "www").stdout.splitlines()
    assert listing[0].split("\t")[-2:] == ["kind", "parent"]
    assert [line.split("\t")[-2] for line in listing[1:]] == ["incremental"] * 3 + ["full"]
    verified = cli(config.path, "verify", "www")
    assert verified.returncode == 0 and "the 3 it builds on" in verified.stdout, verified.stdout


def test_an_incremental_uploads_only_what_changed(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path
) -> None:
    config = write_config(job=INCREMENTAL)
    full = run_job(config, "www")
    (site / "small.txt").write_text("one small change\n")
    increment = run_job(config, "www")
    assert full.stats is not None and increment.stats is not None
    assert increment.stats.files == 1  # the new file only (plus changed directories)
    assert increment.stats.archive_bytes < full.stats.archive_bytes / 10


def test_a_missing_parent_makes_the_next_run_a_full(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path
) -> None:
    config = write_config(job=INCREMENTAL)
    first = run_job(config, "www")
    second = run_job(config, "www")
    (ftp_server.root / "backups/site" / f"{first.backup_id}.manifest.json").unlink()
    third = run_job(config, "www")
    assert third.outcome == "success", third.error
    events = read_events(third.log_path)
    kinds = [e for e in events if e["event"] == "backup kind"]
    assert kinds[0]["kind"] == "full"
    warned = [e for e in events if e["event"] == "this run is a full, not an incremental"]
    assert warned and second.backup_id in warned[0]["reason"]


def test_a_lost_state_dir_makes_the_next_run_a_full(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path
) -> None:
    config = write_config(job=INCREMENTAL)
    run_job(config, "www")
    for path in (config.agent.state_dir / "index").iterdir():
        path.write_bytes(b"stale")
    again = run_job(config, "www")
    kinds = [e for e in read_events(again.log_path) if e["event"] == "backup kind"]
    assert kinds[0]["kind"] == "full"


def test_an_index_in_an_older_format_makes_a_full_with_a_warning(
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    site: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an upgrade that changes the index format, the index this host kept is
    unreadable though it is the newest backup's: a full, and the log says why."""
    from backupagent import incremental

    config = write_config(job=INCREMENTAL)
    run_job(config, "www")
    monkeypatch.setattr(incremental, "FORMAT", incremental.FORMAT + 1)
    again = run_job(config, "www")
    assert again.outcome == "success", again.error
    events = read_events(again.log_path)
    assert [e["kind"] for e in events if e["event"] == "backup kind"] == ["full"]
    warned = [e for e in events if e["event"] == "this run is a full, not an incremental"]
    assert warned and "not an index of format" in warned[0]["reason"]


def test_a_failed_incremental_leaves_the_chain_usable(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    config = write_config(job=INCREMENTAL)
    full = run_job(config, "www")
    (site / "new.txt").write_text("added\n")
    # the incremental's index is stored, its manifest refused: the run fails
    ftp_server.faults = {"STOR": [None, None, "553 Could not create file."]}
    failed = run_job(config, "www")
    assert failed.outcome == "failed"
    after = run_job(config, "www")
    assert after.outcome == "success", after.error
    kinds = [e for e in read_events(after.log_path) if e["event"] == "backup kind"]
    assert (kinds[0]["kind"], kinds[0]["parent"]) == ("incremental", full.backup_id)
    assert restored(config.path, after.backup_id or "", tmp_path / "back", site) == state(site)


def _names(*backups: tuple[str, str | None]) -> tuple[list[str], dict[str, str | None]]:
    names, parents = [], {}
    for backup_id, parent in backups:
        names += [f"{backup_id}.manifest.json", f"{backup_id}.tar.zst.0001"]
        parents[backup_id] = parent
    return names, parents


B = [f"www-202611{day:02d}T030000.000Z-abcdef" for day in range(1, 10)]


@pytest.mark.parametrize(
    ("chain", "keep", "kept", "deleted"),
    [
        # keep = 1 keeps the newest point, and everything it builds on
        ([(B[0], None), (B[1], B[0]), (B[2], B[1])], 1, [B[2], B[1], B[0]], []),
        # an older chain whose points are all beyond the policy goes, newest first
        ([(B[0], None), (B[1], B[0]), (B[2], None), (B[3], B[2])], 2, [B[3], B[2]], [B[1], B[0]]),
        # a full on its own is pruned as before
        ([(B[0], None), (B[1], None), (B[2], None)], 1, [B[2]], [B[1], B[0]]),
    ],
)
def test_retention_keeps_chains_whole(chain, keep, kept, deleted) -> None:
    names, parents = _names(*chain)
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    planned = prune.plan("www", names, Retention(keep=keep), now, parents)
    assert [d.backup.backup_id for d in planned.decisions if d.keep] == kept
    assert [d.backup.backup_id for d in planned.doomed] == deleted
    needed = [d for d in planned.decisions if d.reasons[0].startswith("needed to restore")]
    assert all(d.keep for d in needed)


def test_two_destinations_carry_the_same_chain_and_prune_explains_it(
    tmp_path: Path, site: Path, ftp_server: LocalFtpServer
) -> None:
    (tmp_path / "ftp.pass").write_text(ftp_server.password + "\n")
    (tmp_path / "jobs.toml").write_text(f"""
{agent_table(tmp_path)}
{ftp_table("offsite", ftp_server, tmp_path / "ftp.pass", 'directory = "/backups"' + chr(10) + "keep = 1")}

[destinations.nas]
type = "local"
path = "{tmp_path}/nas"
keep = 1

[jobs.www]
destinations = ["offsite", "nas"]
sources = ["{site}"]
incremental = true
""")
    config = load_config(tmp_path / "jobs.toml")
    full = run_job(config, "www")
    (site / "new.txt").write_text("added\n")
    increment = run_job(config, "www")
    kinds = [e for e in read_events(increment.log_path) if e["event"] == "backup kind"]
    assert (kinds[0]["kind"], kinds[0]["parent"]) == ("incremental", full.backup_id)
    for name in ("offsite", "nas"):
        dry = cli(config.path, "prune", "www", "--dry-run", "--destination", name)
        assert dry.returncode == 0, dry.stderr
        assert f"keep   {full.backup_id}  (needed to restore {increment.backup_id})" in dry.stdout
        back = tmp_path / f"from-{name}"
        done = cli(
            config.path,
            "restore",
            "www",
            "--destination",
            name,
            "--to",
            str(back),
            "--outside-links",
        )
        assert done.returncode == 0, done.stderr
        assert state(back / "files" / str(site).lstrip("/")) == state(site)
    # the nas lost the increment's manifest: the chains differ, so the next run is a full
    (tmp_path / "nas" / f"{increment.backup_id}.manifest.json").unlink()
    again = run_job(config, "www")
    kinds = [e for e in read_events(again.log_path) if e["event"] == "backup kind"]
    assert kinds[0]["kind"] == "full"


def test_an_encrypted_chain_restores_with_the_identity(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    identity = tmp_path / "identity.txt"
    made = cli(None, "keygen", "--out", str(identity))
    recipient = made.stdout.split('encrypt_to = ["')[1].split('"')[0]
    config = write_config(job=f'{INCREMENTAL}\nencrypt_to = ["{recipient}"]')
    run_job(config, "www")
    (site / "new.txt").write_text("added\n")
    increment = run_job(config, "www")
    assert increment.outcome == "success", increment.error
    # the indexes name every path: uploaded as age files, no name of the site in them
    remote = ftp_server.root / "backups/site"
    indexes = sorted(remote.glob("*.index.zst*")) + sorted(remote.glob("*.contents.zst*"))
    assert len(indexes) == 4 and all(p.name.endswith(".age") for p in indexes)
    assert not any(b"new.txt" in p.read_bytes() or b"index.php" in p.read_bytes() for p in indexes)
    args = ["restore", "www", "--to", str(tmp_path / "back"), "--outside-links"]
    refused = cli(config.path, *args)
    assert refused.returncode == 1 and "--identity" in refused.stderr
    done = cli(config.path, *args, "--identity", str(identity))
    assert done.returncode == 0, done.stderr
    assert state(tmp_path / "back" / "files" / str(site).lstrip("/")) == state(site)


def test_an_incremental_whose_full_is_gone_is_refused_not_half_restored(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    config = write_config(job=INCREMENTAL)
    full = run_job(config, "www")
    (site / "new.txt").write_text("added\n")
    increment = run_job(config, "www")
    (ftp_server.root / "backups/site" / f"{full.backup_id}.manifest.json").unlink()
    target = tmp_path / "back"
    refused = cli(config.path, "restore", "www", "--to", str(target))
    assert refused.returncode == 1
    assert f"{increment.backup_id} is an incremental whose chain is broken" in refused.stderr
    assert not target.exists() or not any(target.iterdir())
    verified = cli(config.path, "verify", "www")
    assert verified.returncode == 1 and "chain is broken" in verified.stdout


def test_a_chain_naming_too_much_is_refused_before_anything_is_written(
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    site: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backupagent import unpack

    config = write_config(job=INCREMENTAL)
    run_job(config, "www")
    (site / "new.txt").write_text("added\n")
    run_job(config, "www")
    monkeypatch.setattr(unpack, "MAX_KEPT_BYTES", 1_000)  # scaled down: 512 MiB in use
    from backupagent.actions.restore import restore
    from backupagent.retrieve import RestoreError

    with pytest.raises(RestoreError, match="refused rather than exhaust memory"):
        restore(config, "www", tmp_path / "back")
    assert not (tmp_path / "back").exists() or not any((tmp_path / "back").iterdir())


def test_a_drill_of_an_incremental_restores_its_whole_point(
    write_config: WriteConfig, site: Path, tmp_path: Path
) -> None:
    """The drill extracts the chain (full, then the incremental) and checks the dump the
    incremental carries: the files counted are the whole point's, not the increment's."""
    import sqlite3

    from backupagent.actions.drill import drill

    app = tmp_path / "app.db"
    conn = sqlite3.connect(app)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    conn.commit()
    config = write_config(job=f'{INCREMENTAL}\ndatabases = [{{ type = "sqlite", path = "{app}" }}]')
    assert run_job(config, "www").outcome == "success"
    whole = drill(config, "www").files
    (site / "added.txt").write_text("new")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    conn.close()
    second = run_job(config, "www")
    assert second.outcome == "success"
    assert (
        json.loads(
            (
                tmp_path / "ftp-root" / "backups/site" / f"{second.backup_id}.manifest.json"
            ).read_text()
        )["kind"]
        == "incremental"
    )
    drilled = drill(config, "www")
    assert drilled.ok and drilled.backup_id == second.backup_id, drilled.message
    assert drilled.files == whole + 1
    (dump,) = drilled.dumps
    assert (dump.member, dump.rows, dump.problems) == ("databases/app.sqlite3", 2, [])
