"""Getting data back: list backups, stream them in, extract safely.

A backup's volumes stream in one ahead of the reader (incoming.py: at most two in the
spool, each checked against its manifest's SHA-256 before a byte of it is used) and
are decompressed once. Every member is judged as it arrives (unpack.Admission: no
absolute names, no `..`, hard links only to files of the archive, no devices, no links
leading out unless asked for); unpack.Writer writes without following any link. The
target must be empty and have room first; a refusal or a failure removes what was
written.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import zstandard

from backupagent import contents, crypto, incremental, trust, unpack
from backupagent import manifest as manifest_model
from backupagent.config import Config, MysqlDatabase
from backupagent.destinations import open_destination
from backupagent.destinations.base import (
    CutShort,
    Destination,
    SpoolFull,
    Unreadable,
    free_bytes,
)
from backupagent.incoming import (
    HELD,
    ReadAhead,
    Spans,
    VolumeMismatch,
    VolumeStream,
    check_room,
    spool_needed,
)
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


@dataclass(frozen=True)
class Part:
    """What `restore --include` reads of one archive: the spans of it that hold the
    members it wants (in the concatenation of `volumes`, the only ones downloaded),
    and the directories it wants, made from the index (`given`), not streamed."""

    wanted: frozenset[str]
    volumes: list[manifest_model.Volume]
    spans: list[tuple[int, int]]
    given: tuple[tarfile.TarInfo, ...] = ()


@dataclass
class Fetching:
    """A chosen backup and the ones it builds on (`links`, full first), streamed from
    an open destination through `workdir`, a private directory of the spool."""

    destination: Destination
    links: list[BackupInfo]
    workdir: Path

    def index(self, link: BackupInfo, identities: list[Any] | None) -> contents.Contents | None:
        """`link`'s content index, downloaded and checked against its manifest and the
        archive's size; None when it has none (made before indexes were). BadContents
        when it cannot be used (changed, damaged, or encrypted with no identity)."""
        data = self.index_bytes(link)
        if data is None or link.manifest is None:
            return None
        pinned = link.manifest.content_index
        assert pinned is not None
        if link.encrypted:
            if not identities:
                raise contents.BadContents(f"{pinned.name} is encrypted: no --identity given")
            try:
                data = crypto.decrypt(data, identities)
            except crypto.CryptoError as exc:
                raise contents.BadContents(f"{pinned.name}: {exc}") from None
        try:
            return contents.decode(data, link.manifest.size)
        except contents.BadContents as exc:
            raise contents.BadContents(f"{pinned.name}: {exc}") from None

    def index_bytes(self, link: BackupInfo) -> bytes | None:
        """`link`'s content index as uploaded, checked against its manifest."""
        pinned = link.manifest.content_index if link.manifest else None
        if pinned is None:
            return None
        if pinned.size > contents.MAX_UPLOADED:
            raise contents.BadContents(
                f"{pinned.name}: the manifest says {pinned.size} bytes, over the "
                f"{contents.MAX_UPLOADED} an index may take; not downloaded"
            )
        try:
            data = self.destination.read(pinned.name, pinned.size)
        except (CutShort, Unreadable) as exc:
            raise contents.BadContents(f"{pinned.name} cannot be read: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != pinned.size or digest != pinned.sha256:
            raise contents.BadContents(
                f"{pinned.name} does not match its manifest (SHA-256 {digest}; the manifest "
                f"says {pinned.sha256}): it was changed or cut short"
            )
        return data

    def indexes(self, identities: list[Any] | None) -> list[contents.Contents] | None:
        """Every link's content index, or None (logged when one was unusable) when one
        has none: then each archive is read whole."""
        found = []
        for link in self.links:
            try:
                index = self.index(link, identities)
            except contents.BadContents as exc:
                structlog.get_logger("backupagent.restore").warning(
                    "content index not used: the backup is read whole", reason=str(exc)
                )
                return None
            if index is None:
                return None
            found.append(index)
        return found

    @property
    def backup(self) -> BackupInfo:
        return self.links[-1]

    def check_spool(self) -> None:
        """RestoreError unless the spool has room for the volumes a stream holds."""
        needed = max(spool_needed(link.volumes) for link in self.links)
        try:
            check_room(self.workdir, needed, f"{HELD} volumes of {self.backup.backup_id}")
        except SpoolFull as exc:
            raise RestoreError(f"{exc}; nothing was downloaded") from None

    @contextlib.contextmanager
    def tar(
        self, link: BackupInfo, identities: list[Any] | None, part: Part | None = None
    ) -> Iterator[tuple[VolumeStream, tarfile.TarFile]]:
        """`link`'s archive as a forward-only tar reader over its volumes as they
        arrive, decrypted first if it is an age file; its damage as RestoreError.
        With `part`, only its volumes are downloaded and its spans read."""
        name = link.archive
        if link.encrypted and not identities:
            raise RestoreError(
                f"{name} is encrypted (age): give --identity FILE with a private key "
                "for one of the recipients named in the manifest"
            )
        volumes = link.volumes if part is None else part.volumes
        with VolumeStream(self.destination, volumes, self.workdir) as stream:
            try:
                decrypt: Any = (
                    crypto.decrypting(stream, identities or [])  # type: ignore[arg-type]
                    if link.encrypted
                    else contextlib.nullcontext(
                        stream if part is None else Spans(stream, part.spans)
                    )
                )
                with (
                    decrypt as clear,
                    zstandard.ZstdDecompressor().stream_reader(
                        clear, read_across_frames=True
                    ) as plain,
                    ReadAhead(plain) as ahead,  # type: ignore[arg-type]
                    unpack.open_stream(ahead) as tar,  # type: ignore[arg-type]
                ):
                    yield stream, tar
            except _STREAM_FAULTS as exc:
                raise RestoreError(str(exc)) from None
            except (unpack.UnsafeArchive, incremental.TooManyNames) as exc:
                raise RestoreError(f"refusing the archive: {exc}") from None
            except _UNREADABLE as exc:
                raise RestoreError(f"{name} cannot be read to the end: {exc}") from None


_UNREADABLE = (tarfile.TarError, zstandard.ZstdError, EOFError, crypto.CryptoError)
# what a stream of volumes meets on the way: a volume unlike its manifest, a full spool
_STREAM_FAULTS = (VolumeMismatch, SpoolFull, CutShort)


def read_through(
    source: Fetching, link: BackupInfo, identities: list[Any] | None = None
) -> unpack.Plan | None:
    """Every volume of `link` downloaded and checked against its manifest, and its
    archive read to the end with every member judged (`verify`); None when it is
    encrypted and no identity was given (only the volumes are checked)."""
    index = None
    try:  # without an identity, an encrypted backup's index is checked as uploaded
        if link.encrypted and not identities:
            source.index_bytes(link)
        else:
            index = source.index(link, identities)
    except contents.BadContents as exc:
        raise RestoreError(f"the content index is unusable: {exc}") from None
    if link.encrypted and not identities:
        with VolumeStream(source.destination, link.volumes, source.workdir) as stream:
            try:
                stream.drain()
            except _STREAM_FAULTS as exc:
                raise RestoreError(str(exc)) from None
        return None
    with source.tar(link, identities) as (stream, tar):
        members = unpack.members(tar)
        judged = unpack.plan(members if index is None else _matching(members, index, link))
        stream.drain()  # what follows the tar's end is checked too
        return judged


def _matching(
    members: Iterator[tarfile.TarInfo], index: contents.Contents, link: BackupInfo
) -> Iterator[tarfile.TarInfo]:
    """`members`, each checked against the content index's row for it (name, type,
    size, mtime, where its header starts): verify proves the index right too."""
    rows = index.rows()
    for member in members:
        row = next(rows, None)
        if row is None or row[:6] != _row_of(member):
            raise RestoreError(
                f"the content index of {link.backup_id} does not match its archive at "
                f"{member.name!r}"
                + ("" if row is None else f" (the index lists {row.name!r} there)")
            )
        yield member
    if next(rows, None) is not None:
        raise RestoreError(
            f"the content index of {link.backup_id} lists members its archive does not hold"
        )


def _row_of(member: tarfile.TarInfo) -> tuple[str, str, int, int, str, int]:
    """What the index's row says of `member`, but its end (the next member's offset,
    checked at the next member)."""
    link = member.linkname if member.issym() or member.islnk() else ""
    size = member.size if member.isreg() else 0
    kind = member.type.decode("ascii", "replace")
    return (member.name, kind, size, int(member.mtime), link, member.offset)


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
    source: Fetching,
    dest: Path,
    identities: list[Any] | None = None,
    outside_links: bool = False,
    include: Callable[[str], bool] | None = None,
) -> unpack.Report:
    """Extract the point `source`'s backup was, into an empty `dest`, in one pass over
    each archive as its volumes arrive: newest backup first, each path from the latest
    that holds it unless deleted after (incremental.Newest), databases from the newest
    only. Each member is judged as it streams; a refusal, a volume that fails its hash
    or any other failure removes what was written (`dest` is left as found). With
    `include` (wanted_by), a first pass finds the members it wants, the directories
    above them and the files their hard links point to; RestoreError when none is."""
    created = _empty_target(dest)
    parts: dict[int, Part] | None = None
    selected: _Selected | None = None
    try:  # nothing is written before these
        indexes = source.indexes(identities) if include else None
        if include and indexes and all(i.restartable for i in indexes):
            selected, parts = _planned(source, indexes, include)
        elif include:
            selected = _select(source, identities, outside_links, include)
        _check_target(source, dest, selected)
    except BaseException:
        _remove_written(dest, created)
        raise
    try:
        writer = unpack.Writer(dest)
        chosen = (
            _chosen(source, identities, outside_links, selected)
            if parts is None
            else _parts(source, identities, outside_links, parts)
        )
        for tar, member, judgement in chosen:
            data = unpack.data_of(tar, member) if tar is not None and member.isreg() else None
            writer.add(member, judgement, data)
        return writer.finish()
    except BaseException as exc:
        _remove_written(dest, created)
        left = f"; nothing of it was left in {dest}"
        # a member's data is read here, not in _chosen: the stream's faults arrive here
        if isinstance(exc, (RestoreError, *_STREAM_FAULTS)):
            raise RestoreError(f"{exc}{left}") from None
        if isinstance(exc, _UNREADABLE):
            raise RestoreError(f"the archive cannot be read to the end: {exc}{left}") from None
        if isinstance(exc, unpack.UnsafeArchive):
            raise RestoreError(f"refusing the archive: {exc}{left}") from None
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RestoreError(f"{dest} is full: {free_bytes(dest)} bytes free{left}") from None
        if isinstance(exc, OSError):
            raise RestoreError(f"writing into {dest} failed: {exc}{left}") from None
        raise


def _empty_target(dest: Path) -> bool:
    """`dest` as an empty directory (made if missing: True); RestoreError otherwise."""
    try:
        made = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise RestoreError(f"{dest} is not empty: restore into an empty directory")
    except OSError as exc:
        raise RestoreError(f"cannot use {dest}: {exc.strerror or exc}") from None
    return made


def _remove_written(dest: Path, created: bool) -> None:
    """What a failed restore wrote: `dest` as it was (empty, or not there)."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for entry in list(dest.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def needed_bytes(links: list[BackupInfo]) -> int:
    """What a restore of `links` writes, as the manifests say: a full's bytes read; for
    a chain, the most any of its backups read (the full, as a rule; an estimate, as
    what the chain deleted and re-added is not known before it streams)."""
    return max((link.manifest.contents.bytes for link in links if link.manifest), default=0)


def _check_target(source: Fetching, dest: Path, selected: _Selected | None) -> None:
    """RestoreError unless `dest` has room for what the restore writes (and the spool's
    volumes, when both are on one filesystem), before anything is downloaded."""
    needed = selected.bytes if selected is not None else needed_bytes(source.links)
    spool = max(spool_needed(link.volumes) for link in source.links)
    with contextlib.suppress(OSError):
        if dest.stat().st_dev == source.workdir.stat().st_dev and selected is None:
            needed += spool
    free = free_bytes(dest)
    if needed > free:
        raise RestoreError(
            f"{dest} has {free} bytes free, the backup needs {needed}: restore somewhere "
            "with more room; nothing was extracted"
        )


def listing(source: Fetching, identities: list[Any] | None = None) -> Iterator[tarfile.TarInfo]:
    """What extract_chain would write (and skip), member by member, newest backup of
    a chain first: `files JOB`. From the content indexes alone when every backup of
    the chain has one; else each archive is streamed and judged."""
    indexes = source.indexes(identities)
    if indexes is None:
        for _tar, member, _judgement in _chosen(source, identities, True, None):
            yield member
        return
    for _number, row in _point(source, indexes):
        yield _member(row)


def _point(
    source: Fetching, indexes: list[contents.Contents]
) -> Iterator[tuple[int, contents.Row]]:
    """The rows that make the chain's point, newest backup first, with the number of
    the backup each comes from: the rule of `_chosen`, over the indexes."""
    newest = incremental.Newest(unpack.MAX_KEPT_BYTES) if len(source.links) > 1 else None
    for number in reversed(range(len(source.links))):
        last = number == len(source.links) - 1
        for row in indexes[number].rows():
            if newest is not None and (
                (not last and not row.name.startswith("files/")) or not newest.wants(row.name)
            ):
                continue
            yield number, row
        manifest = source.links[number].manifest
        if newest is not None and manifest is not None:
            newest.passed(manifest.deleted)


def _member(row: contents.Row) -> tarfile.TarInfo:
    member = tarfile.TarInfo(row.name)
    member.type = row.type.encode()
    member.size, member.mtime, member.linkname = row.size, row.mtime, row.link
    return member


def _planned(
    source: Fetching, indexes: list[contents.Contents], include: Callable[[str], bool]
) -> tuple[_Selected, dict[int, Part]]:
    """`restore --include` from the content indexes: the members wanted (as `_select`
    finds them), and of each backup the volumes and spans that hold them, and the
    files its wanted hard links point to (the stream must admit those first)."""
    selected = _Selected(include)
    for _ in selected.members(_member(row) for _, row in _point(source, indexes)):
        pass  # selected notes the names
    if not selected.names:
        raise RestoreError("no member of the backup matches --include; nothing was extracted")
    names: dict[int, set[str]] = {}
    for number, row in _point(source, indexes):
        if row.name in selected.names:
            names.setdefault(number, set()).add(row.name)
    parts = {}
    for number, chosen in names.items():
        index, link = indexes[number], source.links[number]
        positions = {name: i for i, name in enumerate(index.names) if name in chosen}
        given = {name: i for name, i in positions.items() if i in index.dirs}
        streamed = {name: i for name, i in positions.items() if name not in given}
        targets = {index.links[i] for i in streamed.values() if index.types[i] == "1"}
        wanted = set(streamed.values()) | {
            i for i, name in enumerate(index.names) if name in targets
        }
        spans = contents.ranges(index, sorted(wanted))
        numbers, inner = contents.needed(spans, [v.size for v in link.volumes])
        parts[number] = Part(
            frozenset(streamed),
            [link.volumes[v] for v in numbers],
            inner,
            tuple(_directory(index, i) for i in given.values()),
        )
    return selected, parts


def _directory(index: contents.Contents, i: int) -> tarfile.TarInfo:
    """A directory member as the index records it (judged and written like one from
    the stream: it carries only a name, a mode, owners and a time)."""
    member = tarfile.TarInfo(index.names[i])
    member.type = tarfile.DIRTYPE
    member.mode, member.uid, member.gid = index.dirs[i]
    member.mtime = index.mtimes[i]
    return member


def _parts(
    source: Fetching, identities: list[Any] | None, outside_links: bool, parts: dict[int, Part]
) -> Iterator[tuple[tarfile.TarFile | None, tarfile.TarInfo, unpack.Judgement]]:
    """The wanted members of each backup's part, newest backup first, judged as they
    stream; RestoreError when a member its index promised is not in its spans."""
    for number in sorted(parts, reverse=True):
        link, part = source.links[number], parts[number]
        met: set[str] = set()
        admission = unpack.Admission(outside_links)
        for member in part.given:
            yield None, member, admission.judge(member)
        if not part.wanted:
            continue
        with source.tar(link, identities, part) as (_stream, tar):
            for member in unpack.members(tar):
                judgement = admission.judge(member)
                if member.name in part.wanted and member.name not in met:
                    met.add(member.name)
                    yield tar, member, judgement
        if missing := sorted(part.wanted - met):
            raise RestoreError(
                f"the content index of {link.backup_id} does not match its archive: "
                f"{missing[0]!r} is not where it says"
            )


def _chosen(
    source: Fetching,
    identities: list[Any] | None,
    outside_links: bool,
    selected: _Selected | None,
) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, unpack.Judgement]]:
    """The members that make the point, with their judgement, as they stream: every
    member of every archive is judged (an unsafe one anywhere refuses the restore)."""
    newest = incremental.Newest(unpack.MAX_KEPT_BYTES) if len(source.links) > 1 else None
    for number in reversed(range(len(source.links))):
        link = source.links[number]
        last = number == len(source.links) - 1
        with source.tar(link, identities) as (_stream, tar):
            admission = unpack.Admission(outside_links)
            for member in unpack.members(tar):
                judgement = admission.judge(member)
                if selected is not None and member.name not in selected.names:
                    continue
                if newest is not None and (  # a chain: dumps from its newest backup only
                    (not last and not member.name.startswith("files/"))
                    or not newest.wants(member.name)
                ):
                    continue
                yield tar, member, judgement
            if newest is not None and link.manifest is not None:
                newest.passed(link.manifest.deleted)


def _select(
    source: Fetching,
    identities: list[Any] | None,
    outside_links: bool,
    include: Callable[[str], bool],
) -> _Selected:
    """The first pass of `restore --include`: the names it wants (every archive
    streamed and judged once, nothing written)."""
    selected = _Selected(include)
    for link in reversed(source.links):
        with source.tar(link, identities) as (_stream, tar):
            admission = unpack.Admission(outside_links)
            for member in selected.members(unpack.members(tar)):
                admission.judge(member)
    if not selected.names:
        raise RestoreError("no member of the backup matches --include; nothing was extracted")
    return selected


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


def load_database(
    dump: Path, target: MysqlDatabase, password: str | None, create: bool = True
) -> None:
    """Load a MySQL/MariaDB dump into `target.name` (created if missing)."""
    with dump.open("rb") as source:
        load_mysql(Target(target, password, (), None), source, create=create)
