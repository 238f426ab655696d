"""The destination seam: every type keeps the same contract (temporary name, rename,
verify, manifest last; rollback, commit; bounded reads; downloads that stop at the
declared size). Run against the local directory and FTP (pyftpdlib)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backupagent.actions import prune
from backupagent.actions.backup import run_job
from backupagent.config import Retention, SftpDestination
from backupagent.destinations import open_destination
from backupagent.destinations.base import (
    CutShort,
    Destination,
    DestinationError,
    Hooks,
    PartialFile,
    Unreadable,
)
from backupagent.destinations.local import LocalDirectory
from backupagent.destinations.sftp import Sftp
from backupagent.ftpserver import LocalFtpServer
from backupagent.retention import complete_backups, temp_name
from backupagent.retrieve import Fetching, listed, read_through
from backupagent.workers import Cancelled

from ..conftest import WriteConfig, require_system
from ..helpers import Watched, snapshot
from ..sshd import missing, running_sshd

# the destination, and what its directory holds (None: there is no directory)
Opened = tuple[Destination, Callable[[], set[str] | None]]


@pytest.fixture(params=["local", "ftp", "sftp"])
def opened(
    request: pytest.FixtureRequest, tmp_path: Path, write_config: WriteConfig
) -> Iterator[Opened]:
    """An open destination of each type, and a look at its directory from outside."""
    if request.param == "local":
        directory = tmp_path / "nas"
        yield LocalDirectory(directory), lambda: _held(directory)
        return
    if request.param == "sftp":
        why = missing()
        require_system(why is None, why or "")
        with running_sshd(tmp_path / "sshd") as server:
            settings = SftpDestination(
                type="sftp",
                host="127.0.0.1",
                port=server.port,
                user=server.user,
                key_file=server.key_file,
                host_key=server.fingerprint,
                directory=str(server.root / "backups"),
                retry_wait=0.05,  # as for FTP below
            )
            sftp = Sftp("box", settings)
            try:
                yield sftp, lambda: _held(server.root / "backups")
            finally:
                sftp.close()
        return
    server: LocalFtpServer = request.getfixturevalue("ftp_server")
    # retries back off quickly: how long they wait cannot change what a test sees
    destination = open_destination(write_config(dest="retry_wait = 0.05"), "www")
    try:
        yield destination, lambda: _held(server.root / "backups" / "site")
    finally:
        destination.close()


def _held(directory: Path) -> set[str] | None:
    return {p.name for p in directory.iterdir()} if directory.exists() else None


def _file(tmp_path: Path, size: int = 300_000) -> tuple[Path, str]:
    path = tmp_path / "volume"
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_published_files_keep_their_names_and_bytes(opened: Opened, tmp_path: Path) -> None:
    destination, held = opened
    destination.check()
    path, digest = _file(tmp_path)
    sent: list[int] = []
    destination.publish_file(path, "a.tar.zst.0001", digest, sent.append)
    destination.publish_bytes(b'{"x": 1}', "a.manifest.json")
    assert held() == {"a.tar.zst.0001", "a.manifest.json"}  # no temporary name left
    assert sum(sent) == path.stat().st_size
    assert sorted(destination.names()) == ["a.manifest.json", "a.tar.zst.0001"]
    assert destination.read("a.manifest.json", 100) == b'{"x": 1}'
    target = tmp_path / "back"
    assert destination.download("a.tar.zst.0001", target, path.stat().st_size) == digest
    assert target.read_bytes() == path.read_bytes()
    assert os.stat(target).st_mode & 0o777 == 0o600


def test_rollback_removes_what_was_written_since_the_last_commit(
    opened: Opened, tmp_path: Path
) -> None:
    destination, held = opened
    destination.check()
    path, digest = _file(tmp_path)
    destination.publish_file(path, "old.tar.zst.0001", digest)
    destination.publish_bytes(b"{}", "old.manifest.json")
    destination.commit()
    destination.publish_file(path, "new.tar.zst.0001", digest)
    destination.rollback()
    assert held() == {"old.tar.zst.0001", "old.manifest.json"}
    destination.rollback()  # nothing more to remove; never raises
    assert held() == {"old.tar.zst.0001", "old.manifest.json"}


def test_survey_makes_nothing_and_lists_what_is_there(opened: Opened, tmp_path: Path) -> None:
    destination, held = opened
    assert destination.survey() is None  # a run would create the directory
    assert held() is None
    destination.check()
    assert destination.survey() == [] and held() == set()
    destination.publish_bytes(b"x", "one")
    destination.commit()
    assert destination.survey() == ["one"]
    destination.publish_bytes(b"y", "two")  # the destination still works after a survey
    assert held() == {"one", "two"}


def test_reads_and_downloads_are_bounded(opened: Opened, tmp_path: Path) -> None:
    destination, _ = opened
    destination.check()
    path, digest = _file(tmp_path, 10_000)
    destination.publish_file(path, "f", digest)
    with pytest.raises(CutShort):
        destination.read("f", 9_999)
    with pytest.raises(CutShort, match="more of f than its manifest's size"):
        destination.download("f", tmp_path / "short", 5_000)
    with pytest.raises(CutShort, match="cut short"):
        destination.download("f", tmp_path / "long", 20_000)
    assert not (tmp_path / "short").exists() and not (tmp_path / "long").exists()
    with pytest.raises(Unreadable):
        destination.read("missing", 100)


def test_delete_takes_names_already_gone(opened: Opened, tmp_path: Path) -> None:
    destination, held = opened
    destination.check()
    destination.publish_bytes(b"x", "one")
    destination.delete(["one", "never-there"])
    assert held() == set()


def test_a_cancelled_upload_stops_and_rolls_back(tmp_path: Path) -> None:
    cancel = threading.Event()
    destination = LocalDirectory(tmp_path / "nas", cancel=cancel)
    destination.check()
    path, digest = _file(tmp_path, 3 << 20)
    with pytest.raises(Cancelled):
        destination.publish_file(path, "v", digest, lambda n: cancel.set())
    destination.rollback()
    assert _held(tmp_path / "nas") == set()


def test_a_local_directory_refuses_names_that_lead_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"keep")
    destination = LocalDirectory(tmp_path / "nas")
    destination.check()
    before = snapshot(outside)
    for name in ("../outside", "../outside/f", "..", "a/b", ""):
        with pytest.raises(DestinationError):
            destination.publish_bytes(b"x", name)
        with pytest.raises(DestinationError):
            destination.delete([name])
    assert snapshot(outside) == before
    assert _held(tmp_path / "nas") == set()


def test_partial_file_resumes_and_refuses_an_attempt_that_brought_nothing(
    tmp_path: Path,
) -> None:
    partial = PartialFile(tmp_path / "v", 10)
    first = partial.attempt()
    assert first is not None and first.offset == 0
    with first:
        first(b"12345")
    second = partial.attempt()
    assert second is not None and second.offset == 5
    second.close()
    with pytest.raises(CutShort, match="holds only 5 of the 10 bytes"):
        partial.attempt()


def test_a_job_runs_into_a_local_directory_and_restores_from_it(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """The backup action sees only the seam: a run into a local directory makes a
    complete backup that retrieve reads back and retention prunes."""
    config = write_config(job='volume_size = "64K"')
    nas = tmp_path / "nas"
    published: list[Path] = []

    def local(hooks: Hooks, cancel: threading.Event) -> Watched:
        directory = LocalDirectory(nas, "nas", Retention(keep=1), hooks, cancel)
        return Watched(directory, published.append)

    first = run_job(config, "www", destination=local)
    second = run_job(config, "www", destination=local)
    assert first.outcome == second.outcome == "success", (first.error, second.error)
    assert len(published) >= 4  # volumes of both runs, each told after it was published
    backups = complete_backups("www", sorted(_held(nas) or ()))
    assert [b.backup_id for b in backups] == [second.backup_id]  # keep = 1
    assert not any(name.endswith(temp_name("")) for name in _held(nas) or ())
    found, leftovers = listed(LocalDirectory(nas), "www")
    assert [b.backup_id for b in found] == [second.backup_id] and leftovers == []
    (tmp_path / "work").mkdir(mode=0o700)
    source = Fetching(LocalDirectory(nas), found, tmp_path / "work")
    judged = read_through(source, found[0])
    assert found[0].manifest is not None and judged is not None
    assert judged.bytes == found[0].manifest.contents.bytes
    assert list((tmp_path / "work").iterdir()) == []  # the volumes did not linger
    now = dt.datetime.now(dt.UTC)
    assert [
        d.keep for d in prune.plan("www", sorted(_held(nas) or ()), Retention(), now).decisions
    ] == [True]
