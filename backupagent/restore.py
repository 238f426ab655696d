"""Getting data back: list backups, download with resume, verify, extract safely.

Nothing is extracted before the archive's size and SHA-256 match its manifest and
every member has passed unpack.judge (no absolute names, no `..`, hard links only to
files of the archive, no devices, no links leading out unless asked for), and the
target has room for it all; unpack.Writer then writes without following any link.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog
import zstandard

from backupagent import crypto, unpack
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
    """The archive as a forward-only tar reader, decrypting first if it is an age file."""
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
            unpack.open_stream(plain) as tar,
        ):
            yield tar
    finally:
        raw.close()


_UNREADABLE = (tarfile.TarError, zstandard.ZstdError, EOFError, crypto.CryptoError)


def scan(
    archive: list[Path], identities: list[Any] | None = None, outside_links: bool = False
) -> unpack.Plan:
    """Read the whole archive and judge every member (the first pass of a restore, and
    the "decompresses and reads to the end" check of `verify`)."""
    try:
        with _members(archive, identities) as tar:
            return unpack.plan(unpack.members(tar), outside_links)
    except unpack.UnsafeArchive as exc:
        raise RestoreError(f"refusing the archive: {exc}; nothing was extracted") from None
    except _UNREADABLE as exc:
        raise RestoreError(f"{archive[0].name} cannot be read to the end: {exc}") from None


def extract(
    archive: list[Path],
    dest: Path,
    identities: list[Any] | None = None,
    outside_links: bool = False,
) -> unpack.Report:
    """Extract into an empty `dest`, once `scan` has admitted every member."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise RestoreError(f"{dest} is not empty: restore into an empty directory")
    except OSError as exc:
        raise RestoreError(f"cannot use {dest}: {exc.strerror or exc}") from None
    planned = scan(archive, identities, outside_links)  # also proves the identity fits
    free = shutil.disk_usage(dest).free
    if planned.bytes > free:
        raise RestoreError(
            f"{dest} has {free} bytes free, the backup needs {planned.bytes}: "
            "restore somewhere with more room; nothing was extracted"
        )
    writer = unpack.Writer(dest, outside_links)
    try:
        with _members(archive, identities) as tar:
            for member in unpack.members(tar):
                writer.add(member, tar.extractfile(member) if member.isreg() else None)
    except unpack.UnsafeArchive as exc:
        raise RestoreError(f"refusing the archive: {exc}") from None
    except _UNREADABLE as exc:
        raise RestoreError(f"{archive[0].name} cannot be read to the end: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RestoreError(f"{dest} is full (the backup needs {planned.bytes} bytes)") from None
        raise RestoreError(f"writing into {dest} failed: {exc}") from None
    return writer.finish()


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
                planned = scan(archive, identities)
                ok = True
                message = (
                    f"{backup.backup_id}: SHA-256 matches the manifest; {planned.members} "
                    f"members, {planned.bytes} bytes read to the end"
                )
                record.bytes_archived = planned.bytes
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
