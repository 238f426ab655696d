"""Extraction of archives crafted by whoever controls the server: the rules (pure,
table-driven), then whole restores of hostile archives that must change nothing
outside the target, and must keep memory bounded."""

from __future__ import annotations

import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from backupagent.ftpserver import LocalFtpServer
from backupagent.unpack import MAX_HEADER, Verdict, judge, leaves

from .conftest import WriteConfig
from .helpers import cli, peak_rss_mib, plant_backup, snapshot

REMOTE = Path("backups/site")
BACKUP = "www-20261122T050000.000Z-abcdef"


def info(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode, member.mtime = kind, link, mode, 1_700_000_000
    return member


@pytest.mark.parametrize(
    ("member", "files", "outside", "verdict"),
    [
        (info("files/a.txt"), set(), False, Verdict.WRITE),
        (info("files/dir", tarfile.DIRTYPE), set(), False, Verdict.WRITE),
        (info("/etc/cron.d/evil"), set(), False, Verdict.REFUSE),
        (info("files/../../etc/passwd"), set(), False, Verdict.REFUSE),
        (info(".."), set(), False, Verdict.REFUSE),
        (info("./"), set(), False, Verdict.REFUSE),
        (info(""), set(), False, Verdict.REFUSE),
        (info("files/a\x00b"), set(), False, Verdict.REFUSE),
        (info("files/" + "n" * 4096), set(), False, Verdict.REFUSE),
        (info("files/s", tarfile.SYMTYPE, "t" * 4097), set(), True, Verdict.REFUSE),
        (info("files/hl", tarfile.LNKTYPE, "files/a.txt"), {"files/a.txt"}, False, Verdict.WRITE),
        (info("files/hl", tarfile.LNKTYPE, "files/link"), {"files/a.txt"}, False, Verdict.REFUSE),
        (info("files/hl", tarfile.LNKTYPE, "/etc/shadow"), set(), False, Verdict.REFUSE),
        (info("files/hl", tarfile.LNKTYPE, "../x"), {"x"}, False, Verdict.REFUSE),
        (info("files/s", tarfile.SYMTYPE, "a.txt"), set(), False, Verdict.WRITE),
        (info("files/d/s", tarfile.SYMTYPE, "../a.txt"), set(), False, Verdict.WRITE),
        (info("files/s", tarfile.SYMTYPE, "../../outside"), set(), False, Verdict.SKIP),
        (info("files/s", tarfile.SYMTYPE, "/etc"), set(), False, Verdict.SKIP),
        (info("files/s", tarfile.SYMTYPE, "/etc"), set(), True, Verdict.WRITE),
        (info("files/dev", tarfile.CHRTYPE), set(), False, Verdict.SKIP),
        (info("files/disk", tarfile.BLKTYPE), set(), True, Verdict.SKIP),
        (info("files/pipe", tarfile.FIFOTYPE), set(), False, Verdict.SKIP),
    ],
)
def test_judge(member: tarfile.TarInfo, files: set[str], outside: bool, verdict: Verdict) -> None:
    assert judge(member, files, outside).verdict is verdict


@pytest.mark.parametrize(
    ("base", "relative", "out"),
    [
        ("", "a", False),
        ("", "../a", True),
        ("a/b", "../../c", False),
        ("a/b", "../../../c", True),
        ("a", "/abs", True),
        ("a", "b/../../c", False),
        ("a", "b/../../../c", True),
    ],
)
def test_leaves(base: str, relative: str, out: bool) -> None:
    assert leaves(base, relative) is out


def test_the_names_kept_for_the_end_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Links and directories are made last, so their names are kept: a hostile archive
    of millions of them is refused before the writing pass holds them all."""
    from backupagent import unpack

    monkeypatch.setattr(unpack, "MAX_KEPT_BYTES", 10_000)
    links = (info(f"files/l{i}", tarfile.SYMTYPE, "x" * 100) for i in range(1000))
    with pytest.raises(unpack.UnsafeArchive, match="names to keep"):
        unpack.plan(links)
    assert unpack.plan([info("files/a"), info("files/d", tarfile.DIRTYPE)]).members == 2


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Files outside the target that an attack would change: root's 0600 secret."""
    root = tmp_path / "victim"
    root.mkdir()
    secret = root / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    os.utime(secret, (1_600_000_000, 1_600_000_000))
    return root


def _restore(config_path: Path, target: Path, *extra: str):
    return cli(config_path, "restore", "www", "--to", str(target), *extra)


ATTACKS = {
    # tarfile's own filter strips the "/" and extracts the original name
    "absolute name": lambda v: [(info(str(v / "planted")), b"planted")],
    # the hard-link fallback made the symlink, then chown/chmod/utime followed it
    "hard link to a symlink leading out": lambda v: [
        (info("files/link", tarfile.SYMTYPE, str(v / "secret")), None),
        (info("files/hard", tarfile.LNKTYPE, "files/link", mode=0o666), None),
    ],
    "device node, then a hard link to it": lambda v: [
        (info("files/dev", tarfile.CHRTYPE), None),
        (info("files/dev2", tarfile.LNKTYPE, "files/dev"), None),
    ],
    "hard link out of the target": lambda v: [
        (info("files/hard", tarfile.LNKTYPE, str(v / "secret")), None),
    ],
    "dot-dot name": lambda v: [(info("files/../../victim/planted"), b"planted")],
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_a_hostile_archive_is_refused_and_changes_nothing(
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
    victim: Path,
    attack: str,
) -> None:
    config = write_config()
    plant_backup(ftp_server.root / REMOTE, BACKUP, [*ATTACKS[attack](victim)])
    before = snapshot(victim)
    target = tmp_path / "restored"
    result = _restore(config.path, target, "--outside-links")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refusing the archive: unsafe member" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(victim) == before
    assert not target.exists() or not any(target.iterdir())  # judged before anything is written
    verify = cli(config.path, "verify", "www")
    assert verify.returncode == 1 and "unsafe member" in verify.stdout


@pytest.mark.parametrize("outside_links", [False, True])
def test_a_file_behind_a_symlink_is_written_inside(
    write_config: WriteConfig,
    ftp_server: LocalFtpServer,
    tmp_path: Path,
    victim: Path,
    outside_links: bool,
) -> None:
    """A symlink to a directory outside, then a file 'under' it: the file lands in a
    real directory of the target; the link is never written through."""
    config = write_config()
    plant_backup(
        ftp_server.root / REMOTE,
        BACKUP,
        [
            (info("files/sub", tarfile.SYMTYPE, str(victim)), None),
            (info("files/sub/planted"), b"planted"),
        ],
    )
    before = snapshot(victim)
    target = tmp_path / "restored"
    result = _restore(config.path, target, *(["--outside-links"] if outside_links else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(victim) == before
    assert (target / "files/sub/planted").read_bytes() == b"planted"
    assert stat.S_ISDIR((target / "files/sub").lstat().st_mode)
    assert "files/sub:" in result.stdout  # the link is reported, not made


def test_a_huge_gnu_long_name_is_refused_with_bounded_memory(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    """64 MiB of name: tarfile alone reads it whole (a 1 GiB one cost 8.4 GB)."""
    config = write_config()
    name = "files/" + "n" * (64 << 20)
    plant_backup(
        ftp_server.root / REMOTE, BACKUP, [(info(name), b"x")], tar_format=tarfile.GNU_FORMAT
    )
    argv = [sys.executable, "-m", "backupagent", "--config", str(config.path), "verify", "www"]
    result, peak = peak_rss_mib(argv)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"(the limit is {MAX_HEADER})" in result.stdout
    assert peak < 150, f"verify peaked at {peak:.0f} MiB"
