"""Documents stored as zstd-compressed JSON (the incremental index, the content index),
and read back with a bound: what comes back may come from a server."""

from __future__ import annotations

import json

import zstandard


class Unpackable(Exception):
    """Not a document: the reason in plain words."""


def pack(document: dict[str, object]) -> bytes:
    """`document` as compact JSON, zstd level 3."""
    text = json.dumps(document, separators=(",", ":"))
    return zstandard.ZstdCompressor(level=3).compress(text.encode())


def unpack(data: bytes, limit: int, fmt: int, what: str) -> dict[str, object]:
    """The JSON object in `data` (at most `limit` bytes decompressed) whose `format` is
    `fmt`; Unpackable otherwise. `what` names it in the reason."""
    try:
        text = zstandard.ZstdDecompressor().stream_reader(data).read(limit + 1)
    except zstandard.ZstdError as exc:
        raise Unpackable(f"not a zstd stream: {exc}") from None
    if len(text) > limit:
        raise Unpackable(f"over {limit} bytes decompressed")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise Unpackable("not JSON") from None
    if not isinstance(document, dict) or document.get("format") != fmt:
        raise Unpackable(f"not {what} of format {fmt}")
    return document
