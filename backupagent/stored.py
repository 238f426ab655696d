"""Data that is compressed already (JPEG, PNG, ZIP, ...) goes into the archive as zstd
frames of raw blocks: any zstd reader takes them, and no CPU is spent compressing what
will not shrink (zstd -3 gains 0.2% on such files, at about 550 MB/s of one core).

The frame layout is the one RFC 8878 defines: the magic number, a frame header with
only a window descriptor, then blocks of at most 128 KiB, each with a 3-byte header
saying "raw" and its size; the last one flagged. python-zstandard writes no raw blocks
on request, so they are written here.
"""

from __future__ import annotations

MAGIC = b"\x28\xb5\x2f\xfd"
# frame header descriptor 0 (no content size, no checksum, no dictionary, a window
# descriptor follows); window descriptor 0x38: 2**(10 + 7) = 128 KiB
FRAME_HEADER = MAGIC + b"\x00\x38"
BLOCK_MAX = 128 << 10
_RAW = 0  # block type 0: raw, the bytes as they are

# leading bytes of formats that are compressed already (magic numbers from their specs)
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"PK\x03\x04",  # ZIP, and what is built on it: docx, xlsx, jar, WordPress plugin zips
    b"\x1f\x8b",  # gzip
    b"wOF2",  # WOFF2 fonts
    b"wOFF",
    MAGIC,  # zstd
    b"\xfd7zXZ\x00",  # xz
    b"BZh",  # bzip2
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x1a\x45\xdf\xa3",  # Matroska / WebM
    b"OggS",
    b"ID3",  # MP3 with a tag
    b"fLaC",
)


def compressed_already(head: bytes | memoryview) -> bool:
    """Whether a file starting with `head` (its first 16 bytes or more) is in a format
    that is compressed already: zstd would not make it smaller."""
    head = bytes(head[:16])
    if head.startswith(_SIGNATURES):
        return True
    if head[:4] == b"RIFF":  # WebP and AVI are compressed; WAV is not
        return head[8:12] in (b"WEBP", b"AVI ")
    return head[4:8] == b"ftyp"  # MP4, MOV, M4A, HEIC, AVIF


def frame(data: bytes | memoryview) -> bytes:
    """`data` as one zstd frame of raw blocks. Empty data makes a frame with one empty
    last block."""
    view = memoryview(data)
    pieces: list[bytes | memoryview] = [FRAME_HEADER]
    offset = 0
    while True:
        block = view[offset : offset + BLOCK_MAX]
        offset += len(block)
        last = offset >= len(view)
        header = (len(block) << 3) | (_RAW << 1) | int(last)
        pieces.append(header.to_bytes(3, "little"))
        pieces.append(block)
        if last:
            return b"".join(pieces)
