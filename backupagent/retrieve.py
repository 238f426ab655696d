"""Getting data back: list backups, download with resume, check, extract safely.

Nothing is extracted before the archive's size and SHA-256 match its manifest and
every member has passed unpack.judge (no absolute names, no `..`, hard links only to
files of the archive, no devices, no links leading out unless asked for), and the
target has room for it all; unpack.Writer then writes without following any link.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import re
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from backupagent import crypto, incremental, trust, unpack
from backupagent import manifest as manifest_model
from backupagent.config import Config, MysqlDatabase
from backupagent.crypto import AGE_SUFFIX
from backupagent.destinations import open_destination
from backupagent.destinations.base import CutShort, Destination, Unreadable
from backupagent.manifest import Manifest
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
    """A complete backup on the server (its manifest is there), and what that says;
    `problem` when the manifest could not be read or trusted."""

    backup_id: str
    manifest: Manifest | None
    problem: str = ""
    sha256: str = ""  # of the manifest's bytes

    @property
    def readable(self) -> bool:
        return self.manifest is not None

    @property
    def created(self) -> str:
        return self.manifest.created if self.manifest else ""

    @property
    def size(self) -> int:
        return self.manifest.size if self.manifest else 0

    @property
    def files(self) -> int:
        return self.manifest.contents.files if self.manifest else 0

    @property
    def databases(self) -> list[str]:
        return [d.name for d in self.manifest.databases] if self.manifest else []

    @property
    def volumes(self) -> list[manifest_model.Volume]:
        """The uploaded files, in order, each with its size and SHA-256."""
        return list(self.manifest.files) if self.manifest else []

    @property
    def archive(self) -> str:
        """The archive's name (its volumes add `.0001`, `.0002`, ...)."""
        return self.manifest.archive_name if self.manifest else ""

    @property
    def encrypted(self) -> bool:
        return bool(self.manifest and self.manifest.encrypted)

    @property
    def kind(self) -> str:
        return self.manifest.kind if self.manifest else ""

    @property
    def parent(self) -> str | None:
        return self.manifest.parent if self.manifest else None

    @property
    def recipients(self) -> list[str]:
        encryption = self.manifest.encryption if self.manifest else None
        return list(encryption.recipients) if encryption else []


def list_backups(
    config: Config, job: str, name: str | None = None
) -> tuple[list[BackupInfo], list[str]]:
    """The job's complete backups on its destination `name` (by default its first),
    newest first, and its incomplete leftovers. Raises DestinationError."""
    destination = open_destination(config, job, name=name)
    try:
        return listed(destination, job)
    finally:
        destination.close()


def listed(destination: Destination, job: str) -> tuple[list[BackupInfo], list[str]]:
    """`list_backups` on an open destination. A manifest that cannot be read makes its
    backup unreadable, not the listing."""
    names = destination.names()
    backups = [_info(destination, b) for b in reversed(complete_backups(job, names))]
    return backups, incomplete(job, names)


def info(destination: Destination, backup_id: str) -> BackupInfo:
    """One backup's manifest, read and checked (unreadable: `problem` says why)."""
    return _info(destination, RemoteBackup("", backup_id))


def chain(backups: list[BackupInfo], wanted: BackupInfo) -> list[BackupInfo]:
    """`wanted` and the backups it builds on, full first (an incremental restores only
    with all of them); RestoreError when one is missing or unreadable."""
    by_id = {b.backup_id: b for b in backups}
    links = [wanted]
    while (parent := links[-1].parent) is not None:
        found = by_id.get(parent)
        if found is None or not found.readable or found in links:
            why = "is not on the server" if found is None else (found.problem or "loops")
            raise RestoreError(
                f"{wanted.backup_id} is an incremental whose chain is broken: {parent} {why}"
            )
        links.append(found)
    return list(reversed(links))


def _info(destination: Destination, backup: RemoteBackup) -> BackupInfo:
    try:
        data = destination.read(manifest_name(backup.backup_id), manifest_model.MAX_BYTES)
        manifest = manifest_model.parse(data, backup.backup_id)
        return BackupInfo(backup.backup_id, manifest, sha256=hashlib.sha256(data).hexdigest())
    except (manifest_model.ManifestError, CutShort) as exc:
        return BackupInfo(backup.backup_id, None, f"unreadable manifest: {exc}")
    except Unreadable as exc:  # gone or unreadable on the server: this one only
        return BackupInfo(backup.backup_id, None, f"manifest not downloadable: {exc}")


def choose(backups: list[BackupInfo], wanted: str) -> BackupInfo:
    """`latest` (the newest readable one) or a backup id (its unique start is enough)."""
    readable = [b for b in backups if b.readable]
    if not readable:
        if backups:
            raise RestoreError(
                "no backup of this job on the server has a readable manifest "
                f"(newest: {backups[0].backup_id}: {backups[0].problem})"
            )
        raise RestoreError("there is no complete backup of this job on the server")
    if wanted == "latest":
        return readable[0]
    matches = [b for b in backups if b.backup_id == wanted or b.backup_id.startswith(wanted)]
    if len(matches) != 1:
        known = ", ".join(b.backup_id for b in backups[:5])
        raise RestoreError(f"no single complete backup matches {wanted!r} (newest: {known})")
    if not matches[0].readable:
        raise RestoreError(f"{matches[0].backup_id} cannot be restored: {matches[0].problem}")
    return matches[0]


def private_directory(path: Path, key: str) -> Path:
    """`path` (created 0700), refused unless it is a real directory of this user that
    nobody else may write, below directories nobody else can change
    (trust.private_directory): another user could plant links in it for root to follow."""
    try:
        return trust.private_directory(path)
    except trust.Untrusted as exc:
        raise RestoreError(f"{exc} ([agent] {key})") from None
    except OSError as exc:
        raise RestoreError(f"cannot use {path} ([agent] {key}): {exc.strerror or exc}") from None


def download(
    config: Config,
    job: str,
    backup: BackupInfo,
    workdir: Path,
    cancel: threading.Event | None = None,
    name: str | None = None,
) -> list[Path]:
    """The archive's volumes from the job's destination into `workdir`; see `fetched`."""
    destination = open_destination(config, job, cancel=cancel, name=name)
    try:
        return fetched(destination, backup, workdir, config.agent.spool_dir / job)
    finally:
        destination.close()


def fetched(destination: Destination, backup: BackupInfo, workdir: Path, spool: Path) -> list[Path]:
    """The archive's volumes in `workdir` (private: 0700, files 0600), in order; a
    download that breaks is resumed. The server may send no more than the manifest
    declares."""
    private_directory(spool, "spool_dir")
    private_directory(workdir, "spool_dir")
    paths = []
    for volume in backup.volumes:
        try:
            destination.download(volume.name, workdir / volume.name, volume.size)
        except CutShort as exc:  # the server holds another file than the manifest says
            raise RestoreError(str(exc)) from None
        paths.append(workdir / volume.name)
    return paths


def check(volumes: list[Path], backup: BackupInfo) -> None:
    """Each volume's size and SHA-256 against the manifest: a tampered or truncated
    archive is refused."""
    for path, expected in zip(volumes, backup.volumes, strict=True):
        size = path.stat().st_size
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if size != expected.size or digest != expected.sha256:
            raise RestoreError(
                f"{path.name} does not match its manifest ({size} bytes, SHA-256 {digest}; "
                f"the manifest says {expected.size} bytes, {expected.sha256}): it was "
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
    return extract_chain([(archive, frozenset())], dest, identities, outside_links)


def wanted_by(patterns: list[str]) -> Callable[[str], bool]:
    """`restore --include`: whether an archive member is wanted. A pattern is a glob
    (`*` also crosses `/`) that must match the member's name or a directory above it:
    `/var/www/html/wp-content/uploads/2026/11` means the archived
    `files/var/www/...`; `files/...` and `databases/...` are archive names as they are;
    any other pattern (`wp-content/uploads/2026/*`) matches at any depth."""
    anchored = []
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("/"):
            pattern = "files" + pattern
        elif not pattern.startswith(("files/", "databases/")):
            pattern = "*/" + pattern
        # fnmatch's `*` crosses `/`, so "matches the name or a directory above it" is
        # "matches the name, or it followed by /...": one match per member, however deep
        anchored.append(fnmatch.translate(pattern).removesuffix(r"\Z") + r"(?:/.*)?\Z")
    matcher = re.compile("|".join(f"(?:{a})" for a in anchored), re.DOTALL)
    return lambda name: matcher.match(name.rstrip("/")) is not None


def extract_chain(
    chain: list[tuple[list[Path], frozenset[str]]],
    dest: Path,
    identities: list[Any] | None = None,
    outside_links: bool = False,
    include: Callable[[str], bool] | None = None,
) -> unpack.Report:
    """Extract the point the last of `chain` was, into an empty `dest`: each backup of
    the chain is (its volumes, the paths it records as deleted), full first. Every
    archive is judged first (unpack.plan); then each path comes from the latest backup
    that holds it (incremental.layers), databases from the last one only. With
    `include` (wanted_by), only the members it wants, the directories above them and
    the files their hard links point to are written; RestoreError when none is."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise RestoreError(f"{dest} is not empty: restore into an empty directory")
    except OSError as exc:
        raise RestoreError(f"cannot use {dest}: {exc.strerror or exc}") from None
    chosen = _Chosen(chain, identities, outside_links, include)
    free = shutil.disk_usage(dest).free
    if chosen.needed > free:
        raise RestoreError(
            f"{dest} has {free} bytes free, the backup needs {chosen.needed}: "
            "restore somewhere with more room; nothing was extracted"
        )
    writer = unpack.Writer(dest, outside_links)
    try:
        for tar, member in chosen:
            writer.add(member, tar.extractfile(member) if member.isreg() else None)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RestoreError(f"{dest} is full (the backup needs {chosen.needed} bytes)") from None
        raise RestoreError(f"writing into {dest} failed: {exc}") from None
    return writer.finish()


def listing(
    chain: list[tuple[list[Path], frozenset[str]]], identities: list[Any] | None = None
) -> Iterator[tarfile.TarInfo]:
    """What extract_chain would write (and skip), member by member: `files JOB`."""
    for _tar, member in _Chosen(chain, identities, outside_links=True, include=None):
        yield member


class _Chosen:
    """The members of a chain that make its last point, in archive order. Made by the
    first pass (every archive judged, sizes summed, names kept only for a chain or an
    `include`); iterating is the second pass."""

    def __init__(
        self,
        chain: list[tuple[list[Path], frozenset[str]]],
        identities: list[Any] | None,
        outside_links: bool,
        include: Callable[[str], bool] | None,
    ) -> None:
        self.chain = chain
        self.identities = identities
        single = len(chain) == 1  # a full: every member, no names kept (memory bounded)
        found: list[incremental.Layer] = []
        noted = _Noted()
        self.selected = _Selected(include) if include is not None else None
        self.needed = 0
        for number, (archive, deleted) in enumerate(chain):
            names: set[str] = set()
            with self._reading(archive) as tar:  # also proves the identity fits
                members = unpack.members(tar)
                if not single:
                    members = noted.members(members, names, number)
                if self.selected is not None:
                    members = self.selected.members(members)
                self.needed = unpack.plan(members, outside_links).bytes
            last = number == len(chain) - 1
            kept = names if last else {n for n in names if n.startswith("files/")}
            found.append(incremental.Layer(str(number), frozenset(kept), deleted))
        self.source = None if single else incremental.layers(found)
        if self.source is not None:
            self.needed = sum(
                size for (n, name), size in noted.sizes.items() if self.source.get(name) == str(n)
            )
        if self.selected is not None:
            if not self.selected.names:
                raise RestoreError(
                    "no member of the backup matches --include; nothing was extracted"
                )
            self.needed = self.selected.bytes

    def __iter__(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        for number, (archive, _deleted) in enumerate(self.chain):
            with self._reading(archive, second_pass=True) as tar:
                for member in unpack.members(tar):
                    if self.selected is not None and member.name not in self.selected.names:
                        continue
                    if self.source is None or self.source.get(member.name) == str(number):
                        yield tar, member

    @contextlib.contextmanager
    def _reading(self, archive: list[Path], second_pass: bool = False) -> Iterator[tarfile.TarFile]:
        """The archive's tar stream; its refusal or damage as RestoreError."""
        try:
            with _members(archive, self.identities) as tar:
                yield tar
        except unpack.UnsafeArchive as exc:
            done = "" if second_pass else "; nothing was extracted"
            raise RestoreError(f"refusing the archive: {exc}{done}") from None
        except _UNREADABLE as exc:
            raise RestoreError(f"{archive[0].name} cannot be read to the end: {exc}") from None


class _Selected:
    """The members `include` wants, the directories above them and the targets of
    their hard links, found in the first pass; bounded like _Noted."""

    def __init__(self, include: Callable[[str], bool]) -> None:
        self.include = include
        self.names: set[str] = set()
        self.bytes = 0  # of the wanted regular files (an upper bound across a chain)
        self.kept = 0

    def members(self, members: Iterator[tarfile.TarInfo]) -> Iterator[tarfile.TarInfo]:
        for member in members:
            if self.include(member.name):
                parts = member.name.rstrip("/").split("/")
                more = {"/".join(parts[:n]) for n in range(1, len(parts) + 1)}
                if member.islnk():
                    more.add(member.linkname)
                for name in more - self.names:
                    self.kept += len(name) + unpack.KEPT_OVERHEAD
                    self.names.add(name)
                if self.kept > unpack.MAX_KEPT_BYTES:
                    raise unpack.UnsafeArchive(
                        f"the members wanted name more than {unpack.MAX_KEPT_BYTES} bytes: "
                        "refused rather than exhaust memory"
                    )
                if member.isreg():
                    self.bytes += member.size
            yield member


class _Noted:
    """Every member name of a chain's archives (and regular file sizes), bounded in all
    by unpack.MAX_KEPT_BYTES: a long chain cannot add up what one archive may not hold."""

    def __init__(self) -> None:
        self.sizes: dict[tuple[int, str], int] = {}
        self.kept = 0

    def members(
        self, members: Iterator[tarfile.TarInfo], names: set[str], n: int
    ) -> Iterator[tarfile.TarInfo]:
        for member in members:
            self.kept += len(member.name) + unpack.KEPT_OVERHEAD
            if self.kept > unpack.MAX_KEPT_BYTES:
                raise unpack.UnsafeArchive(
                    f"the chain's archives name more than {unpack.MAX_KEPT_BYTES} bytes of "
                    "members: refused rather than exhaust memory"
                )
            names.add(member.name)
            if member.isreg():
                self.sizes[(n, member.name)] = member.size
            yield member


def load_database(
    dump: Path, target: MysqlDatabase, password: str | None, create: bool = True
) -> None:
    """Load a MySQL/MariaDB dump into `target.name` (created if missing)."""
    with dump.open("rb") as source:
        load_mysql(Target(target, password, (), None), source, create=create)
