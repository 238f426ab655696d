"""A backup's volumes as the one stream they were cut from, downloaded one ahead.

A thread downloads volume n+1 while the reader uses volume n. The spool holds at most
`HELD` volumes: a slot is taken before a download starts and given back when the
reader has read that volume to its end and deleted it (the bound is this semaphore).
Each volume's size and SHA-256 are checked as it arrives (the destination hashes what
it writes) and before the reader sees a byte of it, so a volume the server changed
stops the stream at its start. Whatever reads the stream (restore, verify, drill,
`files`) thus needs spool room for two volumes, whatever the backup's size.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from backupagent.destinations.base import CutShort, Destination, SpoolFull, free_bytes
from backupagent.manifest import Volume

HELD = 2  # volumes in the spool at once: the one read, the one downloading
AHEAD_BLOCKS = 8  # ReadAhead's queue: at most this many blocks of AHEAD_BLOCK in memory
AHEAD_BLOCK = 1 << 20
_END = object()


class VolumeMismatch(Exception):
    """A volume differs from its manifest: the server changed it, or holds another."""


def spool_needed(volumes: list[Volume]) -> int:
    """The spool room a stream of `volumes` takes at most: its HELD largest."""
    return sum(sorted((v.size for v in volumes), reverse=True)[:HELD])


def check_room(directory: Path, needed: int, what: str) -> None:
    """SpoolFull unless `directory` has `needed` bytes free (`what` names the need)."""
    free = free_bytes(directory)
    if free < needed:
        raise SpoolFull(
            f"the spool on this host is too small: {free} bytes free in {directory}, "
            f"{needed} needed ({what}); free space or set [agent] spool_dir"
        )


class VolumeStream:
    """The volumes of one backup in order, read as one file (`read`); `drain` reads
    what is left, so every volume is downloaded and checked. Use as a context manager:
    leaving stops the download and removes what is in the spool."""

    def __init__(self, destination: Destination, volumes: list[Volume], workdir: Path) -> None:
        self.destination = destination
        self.volumes = list(volumes)
        self.workdir = workdir
        self._slots = threading.Semaphore(HELD)
        self._ready: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._handle: BinaryIO | None = None
        self._current: Path | None = None
        self._thread = threading.Thread(target=self._fetch, name="volumes", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        """Download each volume into the spool once a slot is free; hand it over
        checked, or hand over why not."""
        try:
            for volume in self.volumes:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                path = self.workdir / volume.name
                _check(self.destination, volume, path)
                self._ready.put(path)
            self._ready.put(_END)
        except BaseException as exc:  # re-raised by read() in the reading thread
            self._ready.put(exc)

    def _next(self) -> bool:
        """The next volume, checked, opened for reading; False at the end."""
        item = self._ready.get()
        if item is _END:
            self._ready.put(_END)  # a later read is at the end too
            return False
        if isinstance(item, BaseException):
            self._ready.put(item)
            raise item
        assert isinstance(item, Path)
        self._current = item
        self._handle = item.open("rb")
        return True

    def read(self, n: int = -1) -> bytes:
        while True:
            if self._handle is None and not self._next():
                return b""
            assert self._handle is not None
            data = self._handle.read(n)
            if data or n == 0:
                return data
            self._release()

    def readable(self) -> bool:
        return True

    def skip(self, n: int) -> None:
        """Pass over `n` bytes (a seek in the volume at hand; a volume passed over whole
        is still downloaded and checked: the spans come from the volumes asked for)."""
        while n > 0:
            if self._handle is None and not self._next():
                return
            assert self._handle is not None
            here = self._handle.tell()
            step = min(n, os.fstat(self._handle.fileno()).st_size - here)
            self._handle.seek(here + step)
            n -= step
            if n:
                self._release()

    def drain(self) -> None:
        """Read to the end: every volume downloaded and checked."""
        while self.read(1 << 20):
            pass

    def _release(self) -> None:
        """The volume read: closed, deleted, its slot free for the next."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._current is not None:
            self._current.unlink(missing_ok=True)
            self._current = None
        self._slots.release()

    def close(self) -> None:
        """Stop downloading (the volume in flight is finished first) and empty the spool
        of this stream's volumes."""
        self._stop.set()
        if self._handle is not None:
            self._release()
        for _ in range(HELD):
            self._slots.release()
        self._thread.join()
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Path):
                item.unlink(missing_ok=True)
        for volume in self.volumes:
            with contextlib.suppress(OSError):
                os.unlink(self.workdir / f"{volume.name}.partial")

    def __enter__(self) -> VolumeStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check(destination: Destination, volume: Volume, path: Path) -> None:
    """`volume` downloaded into `path`, its SHA-256 checked against the manifest."""
    try:
        digest = destination.download(volume.name, path, volume.size)
    except CutShort as exc:  # the server holds another file than the manifest says
        raise VolumeMismatch(str(exc)) from None
    if digest != volume.sha256:
        path.unlink(missing_ok=True)
        raise VolumeMismatch(
            f"{volume.name} does not match its manifest (SHA-256 {digest}; the manifest "
            f"says {volume.sha256}): it was changed or cut short"
        )


class Spans:
    """Only `spans` (start, end offsets, in order) of a stream, read as one: the rest
    is skipped. Each span of an archive is whole zstd frames (contents.ranges)."""

    def __init__(self, stream: VolumeStream, spans: list[tuple[int, int]]) -> None:
        self.stream = stream
        self.spans = list(reversed(spans))
        self.at = 0

    def read(self, n: int = -1) -> bytes:
        while self.spans:
            start, end = self.spans[-1]
            if self.at < start:
                self.stream.skip(start - self.at)
                self.at = start
            want = end - self.at if n is None or n < 0 else min(n, end - self.at)
            data = self.stream.read(want)
            self.at += len(data)
            if self.at >= end:
                self.spans.pop()
            if data:
                return data
            if want:
                raise CutShort("the archive ends before the part the content index names")
        return b""

    def readable(self) -> bool:
        return True


class ReadAhead:
    """`raw` read by a thread of its own, AHEAD_BLOCKS blocks ahead of the reader: the
    decompression (zstd releases the GIL) runs beside the tar parsing and the writing,
    as `zstd -d | tar -x` runs in two processes. Its faults reach the reader. Use as a
    context manager: leaving stops the thread."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._blocks: queue.Queue[object] = queue.Queue(AHEAD_BLOCKS)
        self._stop = threading.Event()
        self._buffer = b""
        self._at = 0
        self._done: object = None  # _END or the fault, once the thread handed it over
        self._thread = threading.Thread(target=self._fill, name="read-ahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                block = self.raw.read(AHEAD_BLOCK)
                self._blocks.put(block if block else _END)
                if not block:
                    return
        except BaseException as exc:  # re-raised by read() in the reading thread
            self._blocks.put(exc)

    def read(self, n: int = -1) -> bytes:
        if self._at >= len(self._buffer):
            if self._done is None:
                item = self._blocks.get()
                if isinstance(item, bytes):
                    self._buffer, self._at = item, 0
                else:
                    self._done = item
            if self._done is not None:
                if isinstance(self._done, BaseException):
                    raise self._done
                return b""
        end = len(self._buffer) if n is None or n < 0 else self._at + n
        data = self._buffer[self._at : end]
        self._at += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put into a full queue
            with contextlib.suppress(queue.Empty):
                self._blocks.get_nowait()
            self._thread.join(0.05)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
