"""Getting data back: list backups, download with resume, verify, extract safely.

Nothing is extracted before the archive's size and SHA-256 match its manifest and
every member has been checked: no absolute paths, no `..`, no hard link leaving the
target, no device files. Symbolic links are created last, after every file, so no
member can be written through one, whatever they point at.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog
import zstandard

from backupagent import crypto
from backupagent.config import Config, MysqlDatabase
from backupagent.crypto import AGE_SUFFIX
from backupagent.destinations import ftp
from backupagent.retention import (
    RemoteBackup,
    complete_backups,
    incomplete,
    manifest_name,
)
from backupagent.sources.databases import Target, load_mysql

KEEP_MODE = 0o1777  # everything but setuid and setgid


class RestoreError(Exception):
    """A restore that must stop, in plain words."""


@dataclass
class BackupInfo:
    """A complete backup on the server, described by its manifest."""

    backup_id: str
    created: str
    size: int
    files: int
    databases: list[str]
    manifest: dict[str, Any]

    @property
    def volumes(self) -> list[dict[str, Any]]:
        """The uploaded files, in order, each with its size and SHA-256."""
        return list(self.manifest["files"])

    @property
    def archive(self) -> str:
        """The archive's name (its volumes add `.0001`, `.0002`, ...)."""
        whole = self.manifest.get("archive")
        return str(whole["name"] if whole else self.volumes[0]["name"])

    @property
    def encrypted(self) -> bool:
        return bool(self.manifest.get("encryption")) or self.archive.endswith(AGE_SUFFIX)


@dataclass
class Extracted:
    """What a restore wrote."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    skipped: list[str] = field(default_factory=list)


def _remote(config: Config, job: str, cancel: threading.Event | None = None) -> ftp.FtpRemote:
    return ftp.FtpRemote(config.destination_of(job), config.passive_for(job), cancel)


def _read(remote: ftp.FtpRemote, name: str) -> bytes:
    buffer = bytearray()

    def fetch(session: ftp.FtpSession, _attempt: int) -> None:
        buffer.clear()
        session.download(name, buffer.extend)

    remote.call(f"download of {name}", fetch)
    return bytes(buffer)


def list_backups(config: Config, job: str) -> tuple[list[BackupInfo], list[str]]:
    """The job's complete backups, newest first, and its incomplete leftovers."""
    remote = _remote(config, job)
    try:
        names = remote.call("listing", lambda s, _: s.names())
        infos = [
            _info(b, json.loads(_read(remote, manifest_name(b.backup_id))))
            for b in reversed(complete_backups(job, names))
        ]
        return infos, incomplete(job, names)
    finally:
        remote.close()


def _info(backup: RemoteBackup, manifest: dict[str, Any]) -> BackupInfo:
    return BackupInfo(
        backup.backup_id,
        manifest.get("created", ""),
        sum(int(v["size"]) for v in manifest["files"]),
        int(manifest.get("contents", {}).get("files", 0)),
        [d["name"] for d in manifest.get("databases", [])],
        manifest,
    )


def choose(backups: list[BackupInfo], wanted: str) -> BackupInfo:
    """`latest` or a backup id (its unique start is enough)."""
    if not backups:
        raise RestoreError("there is no complete backup of this job on the server")
    if wanted == "latest":
        return backups[0]
    matches = [b for b in backups if b.backup_id == wanted or b.backup_id.startswith(wanted)]
    if len(matches) != 1:
        known = ", ".join(b.backup_id for b in backups[:5])
        raise RestoreError(f"no single complete backup matches {wanted!r} (newest: {known})")
    return matches[0]


def download(
    config: Config,
    job: str,
    backup: BackupInfo,
    workdir: Path,
    cancel: threading.Event | None = None,
) -> list[Path]:
    """The archive's volumes in `workdir`, in order; a volume already complete there
    is not fetched again, and a partial one is resumed."""
    workdir.mkdir(parents=True, exist_ok=True)
    remote = _remote(config, job, cancel)
    try:
        return [
            _fetch(remote, workdir / volume["name"], int(volume["size"]))
            for volume in backup.volumes
        ]
    finally:
        remote.close()


def _fetch(remote: ftp.FtpRemote, target: Path, size: int) -> Path:
    partial = target.with_name(target.name + ".partial")
    if target.exists() and target.stat().st_size == size:
        return target

    def fetch(session: ftp.FtpSession, _attempt: int) -> None:
        offset = partial.stat().st_size if partial.exists() else 0
        if offset >= size:
            return
        if offset:
            structlog.get_logger("backupagent.restore").info(
                "resuming download", name=target.name, offset=offset, of=size
            )
        with partial.open("ab") as out:
            session.download(target.name, out.write, offset=offset)

    remote.call(f"download of {target.name}", fetch)
    partial.replace(target)
    return target


def check(volumes: list[Path], backup: BackupInfo) -> None:
    """Each volume's size and SHA-256 against the manifest: a tampered or truncated
    archive is refused."""
    for path, expected in zip(volumes, backup.volumes, strict=True):
        size = path.stat().st_size
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if size != expected["size"] or digest != expected["sha256"]:
            raise RestoreError(
                f"{path.name} does not match its manifest ({size} bytes, SHA-256 {digest}; "
                f"the manifest says {expected['size']} bytes, {expected['sha256']}): it was "
                "changed or cut short; nothing was extracted"
            )


class _Joined:
    """The volumes read one after the other, as the single stream they were cut from."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.handle: BinaryIO | None = None

    def read(self, n: int = -1) -> bytes:
        while True:
            if self.handle is None:
                if not self.paths:
                    return b""
                self.handle = self.paths.pop(0).open("rb")
            data = self.handle.read(n)
            if data or n == 0:
                return data
            self.handle.close()
            self.handle = None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


@contextlib.contextmanager
def _members(volumes: list[Path], identities: list[Any] | None = None) -> Iterator[tarfile.TarFile]:
    """The archive's members in order, decrypting first if it is an age file."""
    name = volumes[0].name
    encrypted = name.endswith(AGE_SUFFIX) or f"{AGE_SUFFIX}." in name
    if encrypted and not identities:
        raise RestoreError(
            f"{name} is encrypted (age): give --identity FILE with a private key "
            "for one of the recipients named in the manifest"
        )
    raw = _Joined(volumes)
    try:
        decrypt: Any = (
            crypto.decrypting(raw, identities or [])  # type: ignore[arg-type]
            if encrypted
            else contextlib.nullcontext(raw)
        )
        with (
            decrypt as clear,
            zstandard.ZstdDecompressor().stream_reader(clear, read_across_frames=True) as plain,
            tarfile.open(fileobj=plain, mode="r|") as tar,  # type: ignore[call-overload]
        ):
            yield tar
    finally:
        raw.close()


def scan(archive: list[Path], dest: Path, identities: list[Any] | None = None) -> tuple[int, int]:
    """Read the whole archive and check every member; returns (members, bytes).

    Refuses absolute names, names leaving `dest`, and hard links leaving it. This
    pass is also the "decompresses and reads to the end" check of `verify`.
    """
    count = total = 0
    try:
        with _members(archive, identities) as tar:
            for member in tar:
                _check_member(member, dest)
                count += 1
                total += member.size
    except (tarfile.TarError, zstandard.ZstdError, EOFError, crypto.CryptoError) as exc:
        raise RestoreError(f"{archive[0].name} cannot be read to the end: {exc}") from None
    return count, total


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    try:
        tarfile.tar_filter(member, str(dest))
    except tarfile.FilterError as exc:
        raise RestoreError(f"refusing the archive: unsafe member {member.name!r}: {exc}") from None
    if member.islnk():
        target = os.path.realpath(os.path.join(dest, member.linkname))
        if os.path.commonpath([target, os.path.realpath(dest)]) != os.path.realpath(dest):
            raise RestoreError(
                f"refusing the archive: hard link {member.name!r} points outside the target"
            )


def extract(archive: list[Path], dest: Path, identities: list[Any] | None = None) -> Extracted:
    """Extract into an empty `dest` (checked by `scan` first): modes, times, links."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise RestoreError(f"{dest} is not empty: restore into an empty directory")
    scan(archive, dest, identities)  # also proves the identity fits, before writing anything
    report = Extracted()
    links: list[tarfile.TarInfo] = []
    directory_times: dict[str, int] = {}

    def admit(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        _check_member(member, dest)
        if member.issym():
            links.append(member)
            return None
        if not (member.isreg() or member.isdir() or member.islnk()):
            report.skipped.append(f"{member.name}: special file (device or fifo), not created")
            return None
        if member.isdir():
            report.directories += 1
            directory_times[member.name.rstrip("/")] = int(member.mtime)
        else:
            report.files += 1
        return member.replace(mode=member.mode & KEEP_MODE, deep=False)

    with _members(archive, identities) as tar:
        tar.extractall(dest, filter=admit)
    for link in links:
        _make_link(link, dest, report)
    for parent in {os.path.dirname(link.name) for link in links}:  # a new link touched it
        if parent in directory_times:
            with contextlib.suppress(OSError):
                moment = directory_times[parent]
                os.utime(dest / parent, (moment, moment), follow_symlinks=False)
    return report


def _make_link(member: tarfile.TarInfo, dest: Path, report: Extracted) -> None:
    """A symbolic link, last: only if its own directory is inside `dest`."""
    path = dest / member.name
    parent = os.path.realpath(path.parent)
    if os.path.commonpath([parent, os.path.realpath(dest)]) != os.path.realpath(dest):
        report.skipped.append(f"{member.name}: its directory leads outside the target")
        return
    if os.path.lexists(path):
        report.skipped.append(f"{member.name}: something else already has this name")
        return
    os.symlink(member.linkname, path)
    with contextlib.suppress(OSError):
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        if os.geteuid() == 0:
            os.lchown(path, member.uid, member.gid)
    report.symlinks += 1


def load_database(
    dump: Path, target: MysqlDatabase, password: str | None, create: bool = True
) -> None:
    """Load a MySQL/MariaDB dump into `target.name` (created if missing)."""
    with dump.open("rb") as source:
        load_mysql(Target(target, password, (), None), source, create=create)


def verify(
    config: Config,
    job: str,
    wanted: str = "latest",
    cancel: threading.Event | None = None,
    identities: list[Any] | None = None,
) -> tuple[bool, str, Path]:
    """Download a backup, check its hashes and read it to the end; recorded as a run."""
    import shutil

    from backupagent.logging import run_log
    from backupagent.runner import new_run_id
    from backupagent.state import History, Run

    started = dt.datetime.now(dt.UTC)
    run_id = new_run_id(started)
    log = structlog.get_logger("backupagent.restore")
    with run_log(config.agent.log_dir, job, run_id) as log_path:
        record = Run(run_id, job, "verify", started, str(log_path))
        workdir = config.agent.spool_dir / job / f"verify-{run_id}"
        try:
            backups, _ = list_backups(config, job)
            backup = choose(backups, wanted)
            record.archive = backup.archive
            archive = download(config, job, backup, workdir, cancel)
            check(archive, backup)
            record.bytes_uploaded = backup.size
            if backup.encrypted and not identities:
                ok = True
                message = (
                    f"{backup.backup_id}: SHA-256 matches the manifest; encrypted, so its "
                    "contents were not read (give --identity to read them to the end)"
                )
            else:
                members, size = scan(archive, workdir / "target", identities)
                ok = True
                message = (
                    f"{backup.backup_id}: SHA-256 matches the manifest; {members} members, "
                    f"{size} bytes read to the end"
                )
                record.bytes_archived = size
        except (RestoreError, *ftp.TRANSFER_ERRORS) as exc:  # type: ignore[misc]
            ok, message = False, str(exc) or type(exc).__name__
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        record.result = "success" if ok else "failed"
        record.error = None if ok else message
        record.finished = dt.datetime.now(dt.UTC)
        (log.info if ok else log.error)("verify finished", result=record.result, detail=message)
        with History(config.agent.state_dir) as history:
            history.save(record)
    return ok, message, log_path
