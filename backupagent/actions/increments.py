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
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from backupagent import incremental
from backupagent.actions.fanout import Fanout
from backupagent.config import Config
from backupagent.destinations.base import Destination, DestinationError
from backupagent.incremental import Index, Link, Next, Stat
from backupagent.retention import RemoteBackup, complete_backups
from backupagent.retrieve import BackupInfo, info


@dataclass
class Increment:
    """This run's kind, what it compares against, and the index it builds."""

    decided: Next
    previous: Index = field(default_factory=dict)
    current: dict[str, Stat] = field(default_factory=dict)
    archived: set[str] = field(default_factory=set)  # what this backup holds

    @property
    def kind(self) -> incremental.Kind:
        return self.decided.kind

    def unchanged(self, arcname: str, path: str) -> bool:
        """Record `path`'s stat; True when the previous backup has it as it is now."""
        try:
            now = incremental.stat_of(os.lstat(path))
        except OSError:
            return False  # the archive reports it
        self.current[arcname] = now
        if self.decided.kind == "incremental" and self.previous.get(arcname) == now:
            return True
        self.archived.add(arcname)
        return False

    def uploaded_index(self) -> bytes:
        """What goes to the server: the whole index after a full; after an incremental
        only its own entries (the chain's entries and deletions rebuild the whole),
        so a night's upload stays near what changed."""
        if self.decided.kind == "full":
            return incremental.encode(self.current)
        return incremental.encode({p: self.current[p] for p in self.archived})

    def deleted(self) -> list[str]:
        if self.decided.kind != "incremental":
            return []
        return sorted(p for p in self.previous if p not in self.current)


def _state(config: Config, job: str) -> tuple[Path, Path]:
    directory = config.agent.state_dir / "index"
    return directory / f"{job}.index.zst", directory / f"{job}.backup"


def plan(config: Config, job: str, fanout: Fanout, now: dt.datetime) -> Increment:
    """Decide full or incremental against every live destination's newest chain."""
    log = structlog.get_logger("backupagent.run")
    spec = config.jobs[job]
    every = incremental.parse_full_every(spec.full_every)
    index_file, id_file = _state(config, job)
    try:
        local = index_file.read_bytes()
        local_id = id_file.read_text().strip()
    except OSError:
        local, local_id = b"", ""
    chains: list[list[BackupInfo]] = []
    broken = ""
    for member in fanout.live:
        names = member.destination.names()
        backups = complete_backups(job, names)
        if not backups:
            chains.append([])
            continue
        try:
            links, why = _chain(member.destination, {b.backup_id for b in backups}, backups[-1])
        except DestinationError as exc:
            links, why = [], f"the chain on {member.name} cannot be read: {exc}"
        broken = broken or why
        chains.append(links)
    same = all([b.backup_id for b in c] == [b.backup_id for b in chains[0]] for c in chains)
    links = chains[0] if chains and same else []
    newest = links[-1].manifest if links else None
    matches = bool(
        newest is not None
        and newest.index_sha256 is not None
        and local_id == newest.backup_id
        and hashlib.sha256(local).hexdigest() == newest.index_sha256
    )
    decided = incremental.next_kind(
        [Link(b.backup_id, _created(b), b.parent) for b in links], every, now, matches
    )
    previous: Index = {}
    if decided.kind == "incremental":
        try:
            previous = incremental.decode(local)
        except incremental.BadIndex as exc:
            decided = Next("full", None, f"the local index cannot be read: {exc}")
    if decided.kind == "full" and (broken or not same or (links and not matches)):
        why = broken or ("the destinations hold different chains" if not same else decided.reason)
        log.warning("this run is a full, not an incremental", reason=why)
        decided = Next("full", None, why)
    log.info("backup kind", kind=decided.kind, parent=decided.parent, reason=decided.reason)
    return Increment(decided, previous)


def _chain(
    destination: Destination, complete: set[str], newest: RemoteBackup
) -> tuple[list[BackupInfo], str]:
    """The newest backup's chain, full first, reading only its manifests; ([], why)
    when a link is missing or unreadable."""
    links = [info(destination, newest.backup_id)]
    while True:
        last = links[-1]
        if not last.readable:
            return [], f"{last.backup_id} cannot be read: {last.problem}"
        if last.parent is None:
            return list(reversed(links)), ""
        if last.parent not in complete or any(b.backup_id == last.parent for b in links):
            return [], f"{last.backup_id} builds on {last.parent}, which is not on the server"
        links.append(info(destination, last.parent))


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
        index_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, data in ((index_file, index), (id_file, backup_id.encode() + b"\n")):
            temp = path.with_name(path.name + ".tmp")
            temp.write_bytes(data)
            os.replace(temp, path)
    except OSError as exc:
        structlog.get_logger("backupagent.run").warning(
            "the index was not saved: the next run is a full", error=str(exc)
        )
        with contextlib.suppress(OSError):
            id_file.unlink()
