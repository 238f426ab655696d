"""The incremental side of a backup run (`incremental = true`): which kind this run
is, the index it compares against, and the index it leaves for the next run.

The index of the newest backup is kept in `state_dir/index/` and uploaded with every
backup; a run continues a chain only when the local index is byte for byte the one
the newest backup on every destination recorded (its SHA-256 in the manifest) and
that chain is whole. Anything else is a full: never a wrong incremental.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from backupagent import incremental
from backupagent.actions.fanout import Fanout
from backupagent.config import Config
from backupagent.destinations.base import Destination, DestinationError
from backupagent.incremental import Index, Link, Next, Stat
from backupagent.retention import complete_backups
from backupagent.retrieve import BackupInfo, info
from backupagent.sources.files import Entry


@dataclass
class Increment:
    """This run's kind, what it compares against, and the index it builds."""

    decided: Next
    previous: Index = field(default_factory=dict)
    current: dict[str, Stat] = field(default_factory=dict)
    archived: set[str] = field(default_factory=set)  # what this backup holds
    known: dict[str, str | None] = field(default_factory=dict)  # parents read so far
    sealed: Sealed | None = None  # once every path is seen

    @property
    def kind(self) -> incremental.Kind:
        return self.decided.kind

    def changed(self, batch: list[tuple[Entry, Stat | None]]) -> list[Entry]:
        """Record each path's Stat; the entries to archive: all of them in a full, in an
        incremental those the previous backup does not have as they are now. An entry
        without a Stat (its lstat failed) is archived: the archive reports it."""
        current, archived, out = self.current, self.archived, []
        previous = self.previous.get if self.decided.kind == "incremental" else None
        for entry, now in batch:
            if now is not None:
                current[entry.arcname] = now
                if previous is not None and previous(entry.arcname) == now:
                    continue  # the backups it builds on hold it as it is
                archived.add(entry.arcname)
            out.append(entry)
        return out

    def seal(self) -> Sealed:
        """Once every path has been seen (the archive is written; its last volume may
        still be uploading, which this overlaps): the indexes and the deletions.

        The server gets the whole index after a full; after an incremental only its
        own entries (the chain's entries and deletions rebuild the whole), so a
        night's upload stays near what changed. This host keeps the whole index."""
        if self.sealed is None:
            whole = incremental.encode(self.current)
            if self.decided.kind == "full":
                self.sealed = Sealed(whole, whole, [])
            else:
                own = incremental.encode({p: self.current[p] for p in self.archived})
                gone = incremental.deleted(self.previous, self.current)
                self.sealed = Sealed(whole, own, gone)
        return self.sealed


@dataclass(frozen=True)
class Sealed:
    """What an incremental job's run leaves: the index kept here, the one uploaded, and
    the paths recorded as deleted."""

    index: bytes
    uploaded: bytes
    deleted: list[str]


@dataclass(frozen=True)
class Local:
    """The index this host kept after its last backup: its bytes, the backup it belongs
    to, and the index decoded (None, with the reason, when it cannot be)."""

    data: bytes = b""
    backup_id: str = ""
    index: dict[str, Stat] | None = None
    problem: str = "no local index"


def read_local(config: Config, job: str) -> Local:
    """Read and decode the local index (run on a thread while the destination logs in:
    for a large site the decoding is a good part of an incremental night)."""
    index_file, id_file = _state(config, job)
    try:
        data = index_file.read_bytes()
        backup_id = id_file.read_text().strip()
    except OSError:
        return Local()
    try:
        return Local(data, backup_id, incremental.decode(data), "")
    except incremental.BadIndex as exc:
        return Local(data, backup_id, None, str(exc))


def _state(config: Config, job: str) -> tuple[Path, Path]:
    directory = config.agent.state_dir / "index"
    return directory / f"{job}.index.zst", directory / f"{job}.backup"


def plan(config: Config, job: str, fanout: Fanout, now: dt.datetime, local: Local) -> Increment:
    """Decide full or incremental against every live destination's newest chain and
    the `local` index (read_local)."""
    log = structlog.get_logger("backupagent.run")
    spec = config.jobs[job]
    every = incremental.parse_full_every(spec.full_every)
    known = known_parents(config, job)
    chains: list[list[Link]] = []
    heads: list[BackupInfo | None] = []  # each destination's newest backup, read
    broken = ""
    for member in fanout.live:
        names = member.destination.names()
        backups = complete_backups(job, names)
        head: BackupInfo | None = None
        links: list[Link] = []
        if backups:
            try:
                head = info(member.destination, backups[-1].backup_id)
                complete = {b.backup_id for b in backups}
                links, why = _chain(head, complete, member.destination, known)
            except DestinationError as exc:
                links, why = [], f"the chain on {member.name} cannot be read: {exc}"
            broken = broken or why
        chains.append(links)
        heads.append(head)
    same = all(c == chains[0] for c in chains)
    links = chains[0] if chains and same else []
    newest = heads[0].manifest if links and heads[0] is not None else None
    matches = bool(
        newest is not None
        and newest.index_sha256 is not None
        and local.backup_id == newest.backup_id
        and hashlib.sha256(local.data).hexdigest() == newest.index_sha256
    )
    decided = incremental.next_kind(links, every, now, matches)
    previous: Index = {}
    if decided.kind == "incremental":
        if local.index is None:  # e.g. kept by an older agent, in an older format
            decided = Next("full", None, f"the local index cannot be read: {local.problem}")
            broken = broken or decided.reason
        else:
            previous = local.index
    if decided.kind == "full" and (broken or not same or (links and not matches)):
        why = broken or ("the destinations hold different chains" if not same else decided.reason)
        log.warning("this run is a full, not an incremental", reason=why)
        decided = Next("full", None, why)
    log.info("backup kind", kind=decided.kind, parent=decided.parent, reason=decided.reason)
    return Increment(decided, previous, known=known)


def _chain(
    head: BackupInfo, complete: set[str], destination: Destination, known: dict[str, str | None]
) -> tuple[list[Link], str]:
    """The chain of `head` (the newest backup, read), full first; ([], why) when a link
    is missing or unreadable. Parents in `known` need no manifest read."""
    if not head.readable or head.manifest is None:
        return [], f"{head.backup_id} cannot be read: {head.problem}"
    known[head.backup_id] = head.parent
    links = [Link(head.backup_id, _created(head), head.parent)]
    seen = {head.backup_id}
    while (parent := links[-1].parent) is not None:
        if parent not in complete or parent in seen:
            return [], f"{links[-1].backup_id} builds on {parent}, which is not on the server"
        if parent not in known:
            found = info(destination, parent)
            if not found.readable:
                return [], f"{parent} cannot be read: {found.problem}"
            known[parent] = found.parent
        links.append(Link(parent, _stamp_time(parent), known[parent]))
        seen.add(parent)
    return list(reversed(links)), ""


def _stamp_time(backup_id: str) -> dt.datetime:
    """When a backup started, from its run id (no manifest needed)."""
    stamp = backup_id.rsplit("-", 2)[-2]
    return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.UTC)


def _created(backup: BackupInfo) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(backup.created)
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)  # unknown: as old as can be


def save(config: Config, job: str, backup_id: str, index: bytes) -> None:
    """After the backup is published: its index becomes the one the next run compares
    against (written atomically; a failure only makes the next run a full)."""
    index_file, id_file = _state(config, job)
    try:
        _replace(index_file, index)
        _replace(id_file, backup_id.encode() + b"\n")
    except OSError as exc:
        structlog.get_logger("backupagent.run").warning(
            "the index was not saved: the next run is a full", error=str(exc)
        )
        with contextlib.suppress(OSError):
            id_file.unlink()


MAX_PARENTS_BYTES = 16 << 20


def known_parents(config: Config, job: str) -> dict[str, str | None]:
    """Parents already read from manifests (they never change for a backup id), so a
    run or a prune does not download every manifest again; anything odd: none known."""
    path = config.agent.state_dir / "index" / f"{job}.parents.json"
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PARENTS_BYTES + 1)
        document = json.loads(data) if len(data) <= MAX_PARENTS_BYTES else None
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        k: v
        for k, v in document.items()
        if isinstance(k, str) and (v is None or isinstance(v, str))
    }


def remember_parents(config: Config, job: str, parents: Mapping[str, str | None]) -> None:
    path = config.agent.state_dir / "index" / f"{job}.parents.json"
    with contextlib.suppress(OSError):  # only a cache: the manifests are read again
        _replace(path, json.dumps(dict(parents), sort_keys=True).encode())


def _replace(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before, never half of it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def parents_of(
    destination: Destination, job: str, names: list[str], known: dict[str, str | None]
) -> dict[str, str | None]:
    """Each complete backup's parent: from `known`, else from its manifest (added to
    `known` when readable; an unreadable one counts as a full, which its children keep)."""
    parents: dict[str, str | None] = {}
    for backup in complete_backups(job, names):
        if backup.backup_id not in known:
            found = info(destination, backup.backup_id)
            if not found.readable:
                parents[backup.backup_id] = None
                continue
            known[backup.backup_id] = found.parent
        parents[backup.backup_id] = known[backup.backup_id]
    return parents
