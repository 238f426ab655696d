"""Getting data back: backups, restore, verify and prune through the command line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from backupagent.cli import _size
from backupagent.config import Config
from backupagent.ftpserver import LocalFtpServer
from backupagent.state import History

from ..conftest import WriteConfig
from ..destinations.test_ftp import point_at
from ..helpers import archived_tree, cli, plant_backup, small_disk, tree

REMOTE = Path("backups/site")


def describe(root: Path) -> dict[str, tuple]:
    """Every path: kind, content hash or link target, mode, mtime (whole seconds)."""
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), int(st.st_mtime))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = ("file", digest, stat.S_IMODE(st.st_mode), int(st.st_mtime))
    return out


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    """Unicode, spaces, empty dirs, links (dangling too), a sparse file, unusual modes."""
    root = tmp_path / "odd"
    (root / "Ünïcødé dir" / "ñested").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "Ünïcødé dir" / "ñested" / "file with spaces.txt").write_text("grüße\n")
    (root / "world-writable.txt").write_text("0777")
    (root / "world-writable.txt").chmod(0o777)
    (root / "private.key").write_text("secret-ish")
    (root / "private.key").chmod(0o600)
    (root / "setuid-tool").write_text("#!/bin/sh\n")
    (root / "setuid-tool").chmod(0o4755)
    (root / "locked dir").mkdir()
    (root / "locked dir" / "inside").write_text("x")
    (root / "locked dir").chmod(0o700)
    with open(root / "sparse.img", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"middle")
    (root / "relative-link").symlink_to("Ünïcødé dir/ñested/file with spaces.txt")
    (root / "dangling-relative").symlink_to("no/such/file")
    (root / "absolute-dangling").symlink_to("/nonexistent/elsewhere")
    for i, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i), follow_symlinks=False)
    return root


def test_round_trip_restores_contents_modes_times_and_links(
    write_config: WriteConfig, odd_tree: Path, tmp_path: Path
) -> None:
    config = write_config()
    config.path.write_text(config.path.read_text().replace(str(tmp_path / "www"), str(odd_tree)))
    assert cli(config.path, "run-job", "www").returncode == 0
    target = tmp_path / "restored"
    result = cli(config.path, "restore", "www", "--to", str(target), "--outside-links")
    assert result.returncode == 0, result.stdout + result.stderr
    restored = describe(target / "files" / str(odd_tree).lstrip("/"))
    expected = describe(odd_tree)
    expected["setuid-tool"] = (*expected["setuid-tool"][:2], 0o755, expected["setuid-tool"][3])
    assert restored == expected
    assert (target / "files" / str(odd_tree).lstrip("/") / "sparse.img").stat().st_size == 64 << 20


def _only_archive(server: LocalFtpServer) -> Path:
    return next((server.root / REMOTE).glob("*.tar.zst.0001"))


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_tampered_or_truncated_archive_is_refused(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path, damage: str
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    archive = _only_archive(ftp_server)
    data = bytearray(archive.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    target = tmp_path / "restored"
    result = cli(config.path, "restore", "www", "--to", str(target))
    assert result.returncode == 1
    # a flipped byte fails the hash; a cut file, the size (no more bytes come on a resume)
    assert "does not match its manifest" in result.stderr or "cut short" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists() or not any(target.iterdir())
    verify = cli(config.path, "verify", "www")
    assert verify.returncode == 1 and "FAILED" in verify.stdout
    with History(config.agent.state_dir) as history:
        assert history.last("www").trigger == "verify" and history.last("www").result == "failed"


def _plant(server: LocalFtpServer, members: list[tuple[str, bytes]], backup_id: str) -> None:
    """A consistent archive and manifest, as an attacker with write access could make."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = zstandard.ZstdCompressor().compress(raw.getvalue())
    folder = server.root / REMOTE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{backup_id}.tar.zst").write_bytes(archive)
    manifest = {
        "job": "www",
        "created": "2026-11-22T05:00:00+00:00",
        "files": [
            {
                "name": f"{backup_id}.tar.zst",
                "size": len(archive),
                "sha256": hashlib.sha256(archive).hexdigest(),
            }
        ],
        "contents": {"files": len(members)},
    }
    (folder / f"{backup_id}.manifest.json").write_text(json.dumps(manifest))


def test_member_escaping_the_target_is_refused(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    config = write_config()
    _plant(
        ftp_server,
        [("files/fine.txt", b"ok"), ("../escaped.txt", b"gotcha")],
        "www-20261122T050000.000Z-abcdef",
    )
    target = tmp_path / "restored"
    result = cli(config.path, "restore", "www", "--to", str(target))
    assert result.returncode == 1
    assert "unsafe member '../escaped.txt'" in result.stderr
    assert not (tmp_path / "escaped.txt").exists()
    assert not target.exists() or not any(target.iterdir())  # checked before anything is written


def test_an_unsafe_member_volumes_into_the_stream_removes_what_was_written(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """Members are judged as they stream: six files (three volumes) are written before
    the unsafe one arrives; the refusal then takes them out again, and nothing outside
    the target is touched."""
    config = write_config()
    fine = [(tarfile.TarInfo(f"files/site/f{n}.bin"), os.urandom(100_000)) for n in range(6)]
    evil = (tarfile.TarInfo("files/../../escaped.txt"), b"gotcha")
    archive = plant_backup(
        ftp_server.root / REMOTE, "www-20261122T050000.000Z-abcdef", [*fine, evil],
        volume_size=128 << 10,
    )  # fmt: skip
    assert len(archive) > 4 * (128 << 10)
    target = tmp_path / "restored"
    target.mkdir()
    around = sorted(p.name for p in tmp_path.iterdir())
    result = cli(config.path, "restore", "www", "--to", str(target))
    assert result.returncode == 1
    assert "unsafe member 'files/../../escaped.txt'" in result.stderr
    assert f"nothing of it was left in {target}" in result.stderr
    assert list(target.iterdir()) == []  # left as it was found: there, and empty
    made = {p.name for p in tmp_path.iterdir()} - set(around)
    assert made <= {"state", "log", "spool"}  # the agent's own, nothing else
    assert not (tmp_path / "escaped.txt").exists()
    assert list((config.agent.spool_dir / "www").iterdir()) == []


def test_files_refuses_an_unsafe_archive_without_a_traceback(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    _plant(ftp_server, [("files/fine.txt", b"ok"), ("../escaped.txt", b"x")], ID_PLANTED)
    listed = cli(config.path, "files", "www")
    assert listed.returncode == 1, listed.stdout + listed.stderr
    assert "refusing the archive: unsafe member '../escaped.txt'" in listed.stderr
    assert "Traceback" not in listed.stderr


ID_PLANTED = "www-20261122T050000.000Z-abcdef"


def test_backups_lists_complete_ones_and_leftovers(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    (ftp_server.root / REMOTE / "www-20200101T000000.000Z-aaaaaa.tar.zst.partial").write_bytes(b"x")
    result = cli(config.path, "backups", "www")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["backup", "created", "size", "volumes", "files", "databases"]
    row = lines[1].split("\t")
    assert row[0].startswith("www-2026") and row[3:] == ["1", "4", "-"]
    assert "incomplete (no manifest; not backups): 1" in result.stdout
    assert "www-20200101T000000.000Z-aaaaaa.tar.zst.partial" in result.stdout


@pytest.mark.parametrize("server", [{"faults": {"RETR": [None, "cut:100000"]}}], indirect=True)
def test_broken_download_is_resumed_and_the_spool_emptied(
    write_config: WriteConfig, server: LocalFtpServer, tmp_path: Path
) -> None:
    config = point_at(write_config(dest="retry_wait = 0.1"), server)
    assert cli(config.path, "run-job", "www").returncode == 0
    result = cli(config.path, "restore", "www", "--to", str(tmp_path / "restored"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming download" in result.stderr and "offset=100000" in result.stderr
    assert list((config.agent.spool_dir / "www").iterdir()) == []


def test_a_failed_restore_leaves_no_download_behind(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    archive = _only_archive(ftp_server)
    archive.write_bytes(archive.read_bytes()[:-1] + b"!")  # one byte changed: the hash fails
    result = cli(config.path, "restore", "www", "--to", str(tmp_path / "restored"))
    assert result.returncode == 1
    assert list((config.agent.spool_dir / "www").iterdir()) == []


def test_verify_succeeds_and_is_recorded(write_config: WriteConfig) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    result = cli(config.path, "verify", "www")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SHA-256 matches the manifest" in result.stdout
    history = cli(config.path, "history", "www").stdout.splitlines()
    assert history[1].split("\t")[4:6] == ["success", "verify"]


def test_prune_dry_run_then_for_real(write_config: WriteConfig, ftp_server: LocalFtpServer) -> None:
    config = write_config()
    config.path.write_text(config.path.read_text().replace("keep = 3", "keep = 5"))
    for _ in range(3):
        assert cli(config.path, "run-job", "www").returncode == 0
    config.path.write_text(config.path.read_text().replace("keep = 5", "keep = 1"))
    before = sorted(p.name for p in (ftp_server.root / REMOTE).iterdir())
    dry = cli(config.path, "prune", "www", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    verdicts = [
        line.split()[0] for line in dry.stdout.splitlines() if line.startswith(("keep", "delete"))
    ]
    assert verdicts == ["keep", "delete", "delete"]
    assert "(newest)" in dry.stdout and "(beyond the policy)" in dry.stdout
    assert sorted(p.name for p in (ftp_server.root / REMOTE).iterdir()) == before
    assert cli(config.path, "prune", "www").returncode == 0
    assert len(list((ftp_server.root / REMOTE).iterdir())) == 3  # archive, index, manifest


# RETR: the manifest, then each volume in turn; the third volume's transfer breaks
@pytest.mark.parametrize(
    "server", [{"faults": {"RETR": [None, None, None, "cut:1000"]}}], indirect=True
)
def test_restore_across_volumes_resumes_one_and_refuses_a_changed_one(
    write_config: WriteConfig, server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    (site / "more.bin").write_bytes(os.urandom(400_000))
    config = point_at(write_config(job='volume_size = "64K"', dest="retry_wait = 0.1"), server)
    assert cli(config.path, "run-job", "www").returncode == 0
    volumes = sorted((server.root / REMOTE).glob("*.tar.zst.0*"))
    assert len(volumes) >= 10
    workdir = config.agent.spool_dir / "www"
    target = tmp_path / "restored"
    result = cli(config.path, "restore", "www", "--to", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming download" in result.stderr and volumes[2].name in result.stderr
    # without --outside-links, a link leading out of the target is listed, not made
    assert "dangling: a symbolic link to '/nonexistent/target', outside the target" in result.stdout
    expected = {k: v for k, v in archived_tree(site).items() if k != "dangling"}
    assert tree(target / "files" / str(site).lstrip("/")) == expected
    assert list(workdir.iterdir()) == []  # the restore's downloads are gone
    listed = cli(config.path, "backups", "www").stdout.splitlines()[1].split("\t")
    assert listed[3] == str(len(volumes))
    assert listed[2] == _size(sum(v.stat().st_size for v in volumes))

    changed = bytearray(volumes[5].read_bytes())
    changed[100] ^= 1
    volumes[5].write_bytes(bytes(changed))
    again = cli(config.path, "restore", "www", "--to", str(tmp_path / "again"))
    assert again.returncode == 1
    assert f"{volumes[5].name} does not match its manifest" in again.stderr
    # volumes 1-5 were extracted before the sixth arrived: all of it removed again
    assert "nothing of it was left in" in again.stderr
    assert not (tmp_path / "again").exists()
    assert list(workdir.iterdir()) == []


def test_a_spool_without_room_for_two_volumes_is_said_before_downloading(
    write_config: WriteConfig, server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    (site / "more.bin").write_bytes(os.urandom(400_000))
    config = point_at(write_config(job='volume_size = "64K"'), server)
    assert cli(config.path, "run-job", "www").returncode == 0
    with small_disk(tmp_path / "small", "100k") as small:
        config.path.write_text(
            config.path.read_text().replace(str(config.agent.spool_dir), str(small))
        )
        target = tmp_path / "restored"
        restored = cli(config.path, "restore", "www", "--to", str(target))
        verified = cli(config.path, "verify", "www")
        held = [p for p in small.rglob("*") if p.is_file()]
    assert restored.returncode == 1, restored.stdout + restored.stderr
    assert "the spool on this host is too small" in restored.stderr
    assert "2 volumes of" in restored.stderr and "nothing was downloaded" in restored.stderr
    assert not target.exists() or not any(target.iterdir())
    assert verified.returncode == 1 and "the spool on this host is too small" in verified.stdout
    assert "server" not in verified.stdout.split("FAILED", 1)[-1].split("\n")[0]
    assert held == []


def test_verify_takes_the_jobs_lock_and_is_recorded(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    """verify is a recorded run like a backup: the job's lock, a history row, no ping."""
    from backupagent.state import job_lock

    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    with job_lock(config.agent.state_dir, "www"):  # a backup of the job is running
        locked = cli(config.path, "verify", "www")
    assert locked.returncode == 75 and "already running" in locked.stderr
    done = cli(config.path, "verify", "www")
    assert done.returncode == 0, done.stdout + done.stderr
    with History(config.agent.state_dir) as history:
        rows = history.runs("www", limit=5)
    assert [(r.trigger, r.result) for r in rows[:2]] == [
        ("verify", "success"),
        ("manual", "success"),
    ]


# --- restore --include and files ------------------------------------------------------


def test_restore_include_brings_back_one_directory(
    write_config: WriteConfig, site: Path, tmp_path: Path
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    target = tmp_path / "partial"
    done = cli(
        config.path, "restore", "www", "--to", str(target), "--include", "wp-content/uploads"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    base = target / "files" / str(site).lstrip("/")
    assert describe(base / "wp-content" / "uploads") == describe(site / "wp-content" / "uploads")
    assert sorted(p.name for p in base.iterdir()) == ["wp-content"]  # nothing else
    assert not (target / "databases").exists()
    # the directories above keep their own modes and times
    assert (base / "wp-content").stat().st_mtime == int((site / "wp-content").stat().st_mtime)


def test_restore_include_by_absolute_path_and_glob(
    write_config: WriteConfig, site: Path, tmp_path: Path
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    target = tmp_path / "two"
    done = cli(
        config.path, "restore", "www", "--to", str(target),
        "--include", f"{site}/index.php", "--include", "*/uploads/*.txt",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    base = target / "files" / str(site).lstrip("/")
    found = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert found == ["index.php", "wp-content/uploads/caf\u00e9 menu.txt"]


def test_restore_include_that_matches_nothing_extracts_nothing(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    target = tmp_path / "none"
    done = cli(config.path, "restore", "www", "--to", str(target), "--include", "no/such/dir")
    assert done.returncode == 1
    assert "no member of the backup matches --include" in done.stderr
    assert not target.exists() or not any(target.iterdir())


def test_files_lists_a_multi_volume_backup(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path
) -> None:
    config = write_config(job='volume_size = "64K"')
    assert cli(config.path, "run-job", "www").returncode == 0
    assert len(list((ftp_server.root / REMOTE).glob("*.tar.zst.0*"))) > 2
    listed = cli(config.path, "files", "www", "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["format"] == 1 and document["backup_id"].startswith("www-")
    rows = {row["path"]: row for row in document["members"]}
    big = site / "wp-content" / "uploads" / "big.bin"
    assert rows[str(big)]["type"] == "file" and rows[str(big)]["size"] == big.stat().st_size
    assert rows[str(site / "wp-content/uploads/latest")] == {
        "path": str(site / "wp-content/uploads/latest"),
        "type": "symlink",
        "size": 0,
        "mtime": rows[str(site / "wp-content/uploads/latest")]["mtime"],
        "link": "big.bin",
    }
    assert rows[str(site / "empty")]["type"] == "directory"
    assert str(site / "logs/error.log") not in rows  # excluded, so not in the backup
    files = {p for p, r in rows.items() if r["type"] == "file"}
    assert files == {str(p) for p in site.rglob("*") if p.is_file() and not p.is_symlink()} - {
        str(site / "wp-content/cache/page.html"),
        str(site / "logs/error.log"),
    }
    plain = cli(config.path, "files", "www").stdout.splitlines()
    assert plain[0] == "type\tsize\tmodified\tpath"
    assert f"file\t{big.stat().st_size}\t" in "\n".join(plain)


def test_files_escapes_what_a_hostile_archive_names(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    backup_id = "www-20261122T050000.000Z-abcdef"
    info = tarfile.TarInfo("files/srv/\x1b]0;owned\x07\tname")
    info.mtime = 10**15  # no such time
    plant_backup(ftp_server.root / REMOTE, backup_id, [(info, b"x")])
    shown = cli(config.path, "files", "www")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    (row,) = shown.stdout.splitlines()[1:]
    assert row.split("\t")[3] == "/srv/\\x1b]0;owned\\x07\\x09name"
    member = json.loads(cli(config.path, "files", "www", "--json").stdout)["members"][0]
    assert member["path"] == "/srv/\x1b]0;owned\x07\tname" and member["mtime"] is None


# The content index (contents.py): `files` and `restore --include` read what they need


def _many_files(site: Path) -> list[Path]:
    """200 incompressible files of 3 KB: about ten 64 KiB volumes."""
    made = []
    for d in range(10):
        for f in range(20):
            path = site / "wp-content" / "uploads" / f"y{d}" / f"photo{f}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(3000))
            made.append(path)
    return made


def _backed_up(write_config: WriteConfig, site: Path, job: str = "") -> tuple[Config, list[Path]]:
    """A backup of the site with `_many_files` in it, in 64 KiB volumes."""
    made = _many_files(site)
    config = write_config(job=f'volume_size = "64K"\n{job}')
    assert cli(config.path, "run-job", "www").returncode == 0
    return config, made


def _downloaded(server: LocalFtpServer) -> list[str]:
    return [name for name, _ in server.sent]


def test_restore_include_of_one_file_downloads_only_its_volume(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    config, made = _backed_up(write_config, site)
    volumes = sorted((ftp_server.root / REMOTE).glob("*.tar.zst.0*"))
    assert len(volumes) >= 8
    for wanted in (made[0], made[97], made[-1]):
        ftp_server.sent.clear()
        target = tmp_path / f"one-{wanted.name}-{wanted.parent.name}"
        done = cli(config.path, "restore", "www", "--to", str(target), "--include", str(wanted))
        assert done.returncode == 0, done.stdout + done.stderr
        restored = [p for p in target.rglob("*") if p.is_file()]
        assert [p.read_bytes() for p in restored] == [wanted.read_bytes()]
        got = _downloaded(ftp_server)
        assert got[0].endswith(".manifest.json") and got[1].endswith(".contents.zst")
        assert len(got) == 3 and ".tar.zst.0" in got[2], got  # one volume of many
        sent = dict(ftp_server.sent)
        assert sent[got[2]] == (ftp_server.root / REMOTE / got[2]).stat().st_size


def test_files_reads_only_the_index(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path
) -> None:
    config, _ = _backed_up(write_config, site)
    ftp_server.sent.clear()
    listed = cli(config.path, "files", "www", "--json")
    assert listed.returncode == 0, listed.stderr
    got = _downloaded(ftp_server)
    assert len(got) == 2 and got[0].endswith(".manifest.json") and got[1].endswith(".contents.zst")
    paths = {row["path"] for row in json.loads(listed.stdout)["members"]}
    assert str(site / "wp-content/uploads/y3/photo7.jpg") in paths


def _rewrite_index(directory: Path, change: Callable[[dict], None]) -> None:
    """The content index changed as `change` says, and the manifest made to pin it (as
    a server that rewrites both could)."""
    (listing,) = directory.glob("*.contents.zst")
    document = json.loads(zstandard.ZstdDecompressor().stream_reader(listing.read_bytes()).read())
    change(document)
    data = zstandard.ZstdCompressor().compress(json.dumps(document).encode())
    listing.write_bytes(data)
    (manifest_path,) = directory.glob("*.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["content_index"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))


def test_an_index_unlike_its_manifest_is_not_used_and_verify_fails(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    (listing,) = (ftp_server.root / REMOTE).glob("*.contents.zst")
    listing.write_bytes(listing.read_bytes()[:-1] + b"\0")
    shown = cli(config.path, "files", "www", "--json")  # from the archive instead
    assert shown.returncode == 0, shown.stderr
    assert str(site / "index.php") in {r["path"] for r in json.loads(shown.stdout)["members"]}
    target = tmp_path / "one"
    done = cli(config.path, "restore", "www", "--to", str(target), "--include", "index.php")
    assert done.returncode == 0, done.stderr
    assert (target / "files" / str(site).lstrip("/") / "index.php").read_bytes() == (
        site / "index.php"
    ).read_bytes()
    checked = cli(config.path, "verify", "www")
    assert checked.returncode == 1
    assert "content index" in checked.stdout and "does not match its manifest" in checked.stdout


def test_an_index_the_manifest_calls_huge_is_not_downloaded(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path
) -> None:
    """A manifest may name any size: past MAX_UPLOADED the index is not read at all."""
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    (manifest_path,) = (ftp_server.root / REMOTE).glob("*.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["content_index"]["size"] = 10**12
    manifest_path.write_text(json.dumps(manifest))
    ftp_server.sent.clear()
    shown = cli(config.path, "files", "www", "--json")  # from the archive instead
    assert shown.returncode == 0, shown.stderr
    assert not any(name.endswith(".contents.zst") for name in _downloaded(ftp_server))
    assert str(site / "index.php") in {r["path"] for r in json.loads(shown.stdout)["members"]}
    checked = cli(config.path, "verify", "www")
    assert checked.returncode == 1 and "not downloaded" in checked.stdout


def test_an_index_that_lies_about_the_archive_is_caught(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    """Pinned by its manifest, yet wrong (two members' names swapped): verify fails;
    restore --include writes what the stream holds under each name, never what the
    index says is there."""
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    wanted = f"files{site}/index.php"

    def swap(document: dict) -> None:
        names = document["names"]
        i, j = names.index(wanted), names.index(f"files{site}/keep.log.txt")
        names[i], names[j] = names[j], names[i]

    _rewrite_index(ftp_server.root / REMOTE, swap)
    checked = cli(config.path, "verify", "www")
    assert checked.returncode == 1
    assert "content index" in checked.stdout and "does not match its archive" in checked.stdout
    target = tmp_path / "lied"
    done = cli(config.path, "restore", "www", "--to", str(target), "--include", "index.php")
    assert done.returncode == 0, done.stderr  # one span holds both: the stream has it
    (found,) = [p for p in target.rglob("*") if p.is_file()]
    assert found.name == "index.php" and found.read_bytes() == (site / "index.php").read_bytes()


def test_an_index_naming_a_member_past_its_span_refuses_the_restore(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    config, made = _backed_up(write_config, site)
    wanted = f"files{made[150]}"

    def rename(document: dict) -> None:  # the first member's name moved to the 150th file
        names = document["names"]
        names[names.index(wanted)] = names[3]
        names[3] = wanted

    _rewrite_index(ftp_server.root / REMOTE, rename)
    target = tmp_path / "wrong"
    done = cli(config.path, "restore", "www", "--to", str(target), "--include", str(made[150]))
    assert done.returncode == 1
    assert "does not match its archive" in done.stderr and "is not where it says" in done.stderr
    assert not target.exists() or not any(target.iterdir())


def test_restore_include_from_a_chain_takes_each_file_from_its_newest_backup(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    config, made = _backed_up(write_config, site, "incremental = true\nfull_every = 10")
    made[5].write_bytes(b"changed after the full\n")
    (site / "index.php").unlink()
    assert cli(config.path, "run-job", "www").returncode == 0
    target = tmp_path / "chain"
    done = cli(
        config.path, "restore", "www", "--to", str(target),
        "--include", str(made[5]), "--include", str(made[6]), "--include", str(site / "index.php"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    base = target / "files" / str(site).lstrip("/")
    assert (base / made[5].relative_to(site)).read_bytes() == b"changed after the full\n"
    assert (base / made[6].relative_to(site)).read_bytes() == made[6].read_bytes()
    assert not (base / "index.php").exists()  # deleted since the full
    listed = json.loads(cli(config.path, "files", "www", "--json").stdout)["members"]
    rows = {r["path"]: r for r in listed}
    assert str(site / "index.php") not in rows
    assert rows[str(made[5])]["size"] == len(b"changed after the full\n")
