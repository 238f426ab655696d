"""The archive stream cut into volumes, each sent on while the next is written.

The archiver writes into a `VolumeWriter`; every `size` bytes it closes the spool
file and hands it to a sending thread (the FTP upload), then opens the next one. A
volume file is only opened when one of two slots is free, and a slot is freed when
its volume has been sent and deleted, so the spool never holds more than two
volumes, whatever the size of the site. Volumes are plain byte ranges of one
stream: `cat NAME.0001 NAME.0002 ... | zstd -d | tar -x` restores without us.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from backupagent.workers import Cancelled, Worker


class SpoolError(OSError):
    """Writing a volume into the spool failed (a full disk, most often)."""

    spool = True  # archive.py tells it from a source that cannot be read by this


SLOTS = 2  # volumes on the spool at once: one being written, one being sent


@dataclass(frozen=True)
class Volume:
    """One finished piece of the archive, waiting in the spool to be sent."""

    index: int  # from 1
    name: str  # the name it is published under
    path: Path
    size: int
    sha256: str  # of the bytes as written: the volume is never read back to hash it


def volume_name(archive: str, index: int) -> str:
    """`NAME.tar.zst.0001`: shell globs list the volumes in order up to 9999."""
    return f"{archive}.{index:04d}"


class VolumeWriter:
    """A write-only stream that cuts what it is given into volume files of `size` bytes."""

    def __init__(
        self,
        spool: Path,
        archive: str,
        size: int,
        hand_over: Callable[[Volume], None],
        slots: threading.Semaphore,
        stop: threading.Event,
    ) -> None:
        self.spool, self.archive, self.size = spool, archive, size
        self.hand_over, self.slots, self.stop = hand_over, slots, stop
        self.count = 0
        self._file: BinaryIO | None = None
        self._path = spool
        self._written = 0
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()

    def write(self, data: bytes | memoryview) -> int:
        with self._lock:  # with encryption, the age thread writes; cut() comes from ours
            return self._write(data)

    def _write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            file = self._file or self._open()
            chunk = view[: self.size - self._written]
            try:
                file.write(chunk)
            except OSError as exc:  # the spool, not a source: say so (and keep errno)
                raise SpoolError(exc.errno, f"writing {self._path}: {exc.strerror}") from exc
            self._hash.update(chunk)  # here, so the upload starts when the volume ends
            self._written += len(chunk)
            view = view[len(chunk) :]
            if self._written == self.size:
                self._finish()
        return len(data)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def room(self) -> int:
        """Bytes the volume being written takes before it is full."""
        return self.size - self._written

    def close(self) -> None:
        """Hand over the last, shorter volume."""
        self.cut()

    def cut(self) -> None:
        """Hand over the volume being written now, however short (the next write
        starts another): it can be sent while the archiver waits."""
        with self._lock:
            if self._file is not None:
                self._finish()

    def discard(self) -> None:
        """After a failure: remove the volume being written (its buffer may not fit)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
            self._path.unlink(missing_ok=True)

    def _open(self) -> BinaryIO:
        while not self.slots.acquire(timeout=0.5):
            if self.stop.is_set():
                raise Cancelled("the upload stopped")
        if self.stop.is_set():
            self.slots.release()
            raise Cancelled("the upload stopped")
        self.count += 1
        self._path = self.spool / volume_name(self.archive, self.count)
        # new, and never through a link: the spool is private, and stays so (README "Security")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._file = os.fdopen(os.open(self._path, flags, 0o600), "wb")
        return self._file

    def _finish(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        volume = Volume(
            self.count,
            volume_name(self.archive, self.count),
            self._path,
            self._written,
            self._hash.hexdigest(),
        )
        self._written, self._hash = 0, hashlib.sha256()
        self.hand_over(volume)


class Pipeline:
    """A `VolumeWriter` whose volumes a thread passes to `send`, in order.

    `send` raising stops the pipeline: the writer raises `Cancelled` at its next
    volume, and `finish` re-raises what `send` raised.
    """

    def __init__(
        self, spool: Path, archive: str, size: int, send: Callable[[Volume], None]
    ) -> None:
        self.send = send
        self.sent: list[Volume] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue[Volume | None] = queue.Queue()
        self._slots = threading.Semaphore(SLOTS)
        self._stop = threading.Event()
        self.writer = VolumeWriter(spool, archive, size, self._queue.put, self._slots, self._stop)
        self._worker = Worker("volume-sender", self._run).start()

    def _run(self) -> None:
        while (volume := self._queue.get()) is not None:
            if self.error is None and not self._stop.is_set():
                try:
                    self.send(volume)
                    self.sent.append(volume)
                except BaseException as exc:  # re-raised by finish() in the archiving thread
                    self.error = exc
                    self._stop.set()
            volume.path.unlink(missing_ok=True)
            self._slots.release()

    def finish(self) -> list[Volume]:
        """After the archive is complete: send the last volume, wait; the volumes sent."""
        self.writer.close()
        self._end()
        if self.error is not None:
            raise self.error
        return self.sent

    def abort(self) -> BaseException | None:
        """After the archiver failed: stop sending, remove spooled volumes; `send`'s error."""
        self._stop.set()
        self.writer.discard()
        self._end()
        return self.error

    def _end(self) -> None:
        self._queue.put(None)
        self._worker.wait()
