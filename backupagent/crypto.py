"""Encryption in the age format (age-encryption.org/v1), through pyrage.

Backups are encrypted to public recipients only, so the agent holds no secret; a
user decrypts with `age -d -i identity.txt` years later without backupagent.
pyrage's encrypt_io/decrypt_io pull from a reader and push to a writer in small
chunks, so the archive is never held in memory or written to disk in clear: the
compressor writes into a pipe that a thread encrypts from.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
from pyrage import ssh, x25519

from backupagent.workers import Worker

AGE_SUFFIX = ".age"


class CryptoError(Exception):
    """A key that cannot be used, or data that does not decrypt with it."""


def parse_recipient(text: str) -> Any:
    """An age X25519 recipient (age1...) or an SSH public key (ssh-ed25519/ssh-rsa ...)."""
    try:
        if text.startswith("age1"):
            return x25519.Recipient.from_str(text)
        if text.startswith("ssh-"):
            return ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise CryptoError(f"not a valid recipient: {exc}") from None
    raise CryptoError("a recipient is an age public key (age1...) or an SSH public key (ssh-...)")


def fingerprint(recipient: str) -> str:
    """A short, stable name for a recipient in manifests and logs."""
    return "sha256:" + hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def load_identities(path: Path) -> list[Any]:
    """The identities in an age identity file (age-keygen output; comments allowed)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CryptoError(f"cannot read the identity file {path}: {exc.strerror}") from None
    identities = []
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                identities.append(x25519.Identity.from_str(line))
            except pyrage.IdentityError as exc:
                raise CryptoError(f"{path}: not a valid age identity: {exc}") from None
    if not identities:
        raise CryptoError(f"{path} holds no age identity (AGE-SECRET-KEY-...)")
    return identities


def generate() -> tuple[str, str]:
    """A new (identity, recipient) pair, as age-keygen makes."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


@contextlib.contextmanager
def encrypting(sink: BinaryIO, recipients: list[str]) -> Iterator[BinaryIO]:
    """A writable stream whose bytes reach `sink` encrypted to `recipients`."""
    parsed = [parse_recipient(r) for r in recipients]
    with _pumped(lambda reader: pyrage.encrypt_io(reader, sink, parsed)) as writer:
        yield writer


def encrypt(data: bytes, recipients: list[str]) -> bytes:
    """Small bytes (a content index) encrypted to `recipients`, as one age file."""
    return bytes(pyrage.encrypt(data, [parse_recipient(r) for r in recipients]))


def decrypt(data: bytes, identities: list[Any]) -> bytes:
    """`encrypt` undone; CryptoError when no identity fits or the file is damaged."""
    try:
        return bytes(pyrage.decrypt(data, identities))
    except Exception as exc:  # pyrage raises its own error types
        raise CryptoError(f"cannot decrypt: {exc}") from None


@contextlib.contextmanager
def decrypting(source: BinaryIO, identities: list[Any]) -> Iterator[Any]:
    """A readable stream of `source` decrypted (a thread feeds it through a pipe)."""
    read_end, write_end = os.pipe()
    reader, writer = os.fdopen(read_end, "rb"), os.fdopen(write_end, "wb")

    def close() -> None:
        with contextlib.suppress(OSError):
            writer.close()

    worker = Worker("age-decrypt", pyrage.decrypt_io, source, writer, identities, then=close)
    worker.start()
    try:
        yield _Checked(reader, worker)
    finally:
        reader.close()
        worker.wait()
    if worker.error is not None and not isinstance(worker.error, BrokenPipeError):
        raise CryptoError(f"cannot decrypt: {worker.error}")


class _Checked:
    """A reader that turns the decrypting thread's failure into an error on read."""

    def __init__(self, reader: BinaryIO, worker: Worker[None]) -> None:
        self.reader = reader
        self.worker = worker

    def read(self, n: int = -1) -> bytes:
        data = self.reader.read(n)
        if not data and self.worker.error is not None:
            raise CryptoError(f"cannot decrypt: {self.worker.error}")
        return data

    def readable(self) -> bool:
        return True


@contextlib.contextmanager
def _pumped(consume: Any) -> Iterator[BinaryIO]:
    """A pipe: the caller writes, a thread runs `consume(reader)`; errors re-raised."""
    read_end, write_end = os.pipe()
    reader, writer = os.fdopen(read_end, "rb"), os.fdopen(write_end, "wb")

    worker = Worker("age-encrypt", consume, reader, then=reader.close).start()
    try:
        yield writer
    finally:
        with contextlib.suppress(OSError):
            writer.close()
        worker.wait()
    if worker.error is not None:
        raise CryptoError(f"encryption failed: {worker.error}")
