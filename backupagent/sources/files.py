"""Walking source directories: gitignore-style excludes, links never followed."""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from backupagent import trust
from backupagent.config import AgentConfig, Job
from backupagent.incremental import Stat, stat_of

Warn = Callable[[str, str], None]


class Directory:
    """A directory the walk opened. What it lists is opened relative to it, never by
    its path again: a site's user who swaps a directory for a symbolic link to /root
    after it was walked does not get /root into the backup. Closed when the last
    entry and walk step holding it are gone (CPython drops it at once)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        os.close(self.fd)


class Entry(NamedTuple):
    """One thing to archive: its path on disk and its name inside the archive, and
    for what the walk found inside a directory, that open directory and its own name."""

    path: str
    arcname: str
    is_file: bool = False  # a regular file when walked: opened without an lstat first
    name: str = ""
    parent: Directory | None = None  # None: the path is opened as it is (a root)

    def lstat(self) -> os.stat_result:
        if self.parent is None:
            return os.lstat(self.path)
        return os.lstat(self.name, dir_fd=self.parent.fd)

    def readlink(self) -> str:
        if self.parent is None:
            return os.readlink(self.path)
        return os.readlink(self.name, dir_fd=self.parent.fd)


def archive_name(path: Path | str) -> str:
    """Where an absolute path lands in the archive: `files/<path without leading />`."""
    return "files/" + str(path).lstrip("/")


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOT_DIRECTORY = frozenset((errno.ELOOP, errno.ENOTDIR))  # O_NOFOLLOW met a link, or a file
_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE))  # not the directory's fault: fail


def walk(
    root: Path,
    exclude: Sequence[str],
    warn: Warn,
    skip: frozenset[tuple[int, int]] = frozenset(),
    excluded: Callable[[str, str, bool], None] | None = None,
) -> Iterator[Entry]:
    """Yield `root` and everything below it that `exclude` does not match.

    Patterns are matched against the path relative to `root`, as in a .gitignore
    placed there; `excluded` hears each path a pattern left out (its path, the path
    relative to root, and whether it is a directory, which is not walked). Directories
    whose (device, inode) is in `skip` are left out;
    unreadable directories are reported through `warn` and skipped. Each directory
    is opened relative to its parent, without following a link, and each entry holds
    its directory open: take entries as they come rather than keeping them all.
    """
    match = None
    if exclude:
        import pathspec  # only jobs with excludes pay for its import

        match = pathspec.GitIgnoreSpec.from_lines(exclude).match_file
    yield Entry(str(root), archive_name(root))
    # (the open parent or None for the root, name to open, path, path relative to root)
    stack: list[tuple[Directory | None, str, str, str]] = [(None, str(root), str(root), "")]
    while stack:
        parent, name, directory, rel = stack.pop()
        prefix = archive_name(directory).rstrip("/") + "/"  # once per directory
        base = directory if directory.endswith("/") else directory + "/"
        try:
            if parent is None:  # the root as configured, through links of root only
                here = Directory(trust.open_directory(Path(name)))
            else:
                here = Directory(os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent.fd))
            with os.scandir(here.fd) as it:
                children = sorted(it, key=_NAME)
        except trust.Untrusted as exc:
            warn(directory, f"skipped: {exc}")
            continue
        except OSError as exc:
            if exc.errno in _EXHAUSTED:
                raise
            if parent is not None and exc.errno in _NOT_DIRECTORY:
                warn(directory, "no longer a directory (a link or a file now), skipped")
            else:
                warn(directory, f"directory not readable, skipped: {exc.strerror or exc}")
            continue
        subdirs = []
        for child in children:
            name = child.name
            # most entries: a regular file, known from the directory without a stat
            is_file = child.is_file(follow_symlinks=False)
            if is_file and match is None:
                yield _entry(Entry, (base + name, prefix + name, True, name, here))
                continue
            try:
                is_dir = not is_file and child.is_dir(follow_symlinks=False)
                if is_dir:
                    st = child.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) in skip:
                        continue
            except OSError as exc:
                warn(base + name, f"cannot stat, skipped: {exc.strerror or exc}")
                continue
            if match is not None and match(
                relative := f"{rel}{name}/" if is_dir else f"{rel}{name}"
            ):
                if excluded is not None:
                    excluded(base + name, relative, is_dir)
                continue
            yield _entry(Entry, (base + name, prefix + name, is_file, name, here))
            if is_dir:
                subdirs.append((here, name, base + name, f"{rel}{name}/"))
        stack.extend(reversed(subdirs))


_NAME = operator.attrgetter("name")
_entry = tuple.__new__  # an Entry without its generated __new__: half the cost per file


def job_roots(job: Job) -> dict[Path, list[str]]:
    """Each root a run of `job` walks, with the exclude patterns that apply below it."""
    roots = {source: list(job.exclude) for source in job.sources}
    if job.wordpress:
        roots[job.wordpress] = [*job.exclude, *job.wordpress_exclude]
    return roots


def own_directories(agent: AgentConfig) -> frozenset[tuple[int, int]]:
    """The agent's own directories, never archived: they change while it runs."""
    own = (agent.spool_dir, agent.log_dir, agent.state_dir)
    return frozenset(i for i in map(identity, own) if i is not None)


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a directory, to recognise it while walking; None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


BATCH = 1024  # entries handed over at a time: one queue operation per batch
AHEAD = 16  # batches: the walk runs at most 16,384 entries (about 5 MB) ahead
OPEN_PER_BATCH = 8  # directories a batch holds open: the scan holds at most about 150

Scanned = tuple[Entry, Stat | None]


class Scan:
    """The walk of every root, on a thread and ahead of its reader, so that it runs
    while the destination logs in. With `with_stat`, each entry comes with its lstat as
    a Stat (None when that failed: the archive reports it), which an incremental
    compares.

    Bounded: at most AHEAD batches wait, each holding at most OPEN_PER_BATCH
    directories open (so a tree of tiny directories does not run out of descriptors).
    `close` stops the walk (a failed run)."""

    def __init__(
        self,
        roots: dict[Path, list[str]],
        warn: Warn,
        skip: frozenset[tuple[int, int]],
        with_stat: bool,
    ) -> None:
        from backupagent.workers import Worker

        self.roots = roots
        self.warn = warn
        self.skip = skip
        self.with_stat = with_stat
        self._queue: queue.Queue[list[Scanned] | None] = queue.Queue(AHEAD)
        self._closed = threading.Event()
        self._worker = Worker("scan", self._produce)

    def start(self) -> Scan:
        self._worker.start()
        return self

    def _produce_entries(self) -> Iterator[Entry]:
        for root, patterns in self.roots.items():
            yield from walk(root, patterns, self.warn, self.skip)

    def _produce(self) -> None:
        batch: list[Scanned] = []
        holding, last = 0, None  # directories the batch holds open; the newest
        try:
            for entry in self._produce_entries():
                st = None
                if self.with_stat:
                    with contextlib.suppress(OSError):
                        st = stat_of(entry.lstat())
                batch.append((entry, st))
                if entry.parent is not last:
                    holding, last = holding + 1, entry.parent
                if len(batch) == BATCH or holding == OPEN_PER_BATCH:
                    if not self._put(batch):
                        return
                    batch, holding, last = [], 0, None
            self._put(batch)
        finally:
            self._put(None)

    def _put(self, item: list[Scanned] | None) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Scanned]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Scanned]]:
        """The walk a batch at a time (an incremental skips most entries in one loop)."""
        while (batch := self._queue.get()) is not None:
            yield batch
        self._worker.join()  # the walk's own error, if any

    def close(self) -> None:
        self._closed.set()
