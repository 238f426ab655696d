"""Compressed-already files stored as raw zstd blocks: read back by every zstd reader."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from backupagent import stored
from backupagent.archive import write_archive
from backupagent.sources.files import walk

from .helpers import decompress, tree, unpack

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (JPEG, True),
        (PNG, True),
        (b"GIF89a\x01\x00", True),
        (b"PK\x03\x04\x14\x00", True),  # zip, docx, a plugin download
        (b"\x1f\x8b\x08\x00", True),  # gzip
        (b"wOF2\x00\x01\x00\x00", True),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", True),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", False),  # PCM: compressible
        (b"\x00\x00\x00\x18ftypmp42", True),  # MP4
        (b"\x28\xb5\x2f\xfd\x00", True),  # zstd
        (b"%PDF-1.7\n", False),  # mixed content: zstd still gains
        (b"<?php\n", False),
        (b"\xff\xd8", False),  # too short to be a JPEG
        (b"", False),
    ],
)
def test_compressed_formats_are_told_by_their_leading_bytes(head: bytes, expected: bool) -> None:
    assert stored.compressed_already(head) is expected


@pytest.mark.parametrize(
    "size", [0, 1, stored.BLOCK_MAX - 1, stored.BLOCK_MAX, 3 * stored.BLOCK_MAX + 7]
)
def test_a_stored_frame_reads_back_with_python_zstandard_and_the_zstd_tool(size: int) -> None:
    data = os.urandom(size)
    frame = stored.frame(data)
    assert len(frame) == 6 + 3 * max(1, -(-size // stored.BLOCK_MAX)) + size  # no copy, no growth
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame)).read() == data
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-dc"], input=frame, capture_output=True, check=True)
        assert out.stdout == data


def test_media_in_an_archive_are_stored_and_restored_byte_for_byte(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "uploads").mkdir(parents=True)
    photo = JPEG + os.urandom(3 << 20)  # several of the archiver's 1 MiB pieces
    (site / "uploads" / "photo.jpg").write_bytes(photo)
    (site / "uploads" / "named.jpg").write_bytes(b"<?php " * 40_000)  # by content, not name
    (site / "index.php").write_text("<?php echo 1;\n" * 10_000)
    out = io.BytesIO()
    write_archive(walk(site, [], _no_warning), out)
    data = out.getvalue()
    # the photo went in as it is: about its own size, and as raw blocks, not compressed
    assert len(photo) < len(data) < len(photo) + (64 << 10)
    assert photo[: stored.BLOCK_MAX - 16] in data
    # the misnamed text was compressed all the same
    assert b"<?php <?php <?php <?php " * 100 not in data
    unpack(data, tmp_path / "out")
    assert tree(tmp_path / "out" / "files" / str(site).lstrip("/")) == tree(site)
    if shutil.which("zstd"):  # and the zstd tool reads the whole archive
        tool = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True)
        assert tool.stdout == decompress(data)


def _no_warning(path: str, reason: str) -> None:
    raise AssertionError(f"{path}: {reason}")


def test_stored_media_in_an_encrypted_archive_decrypt_with_the_age_tool(tmp_path: Path) -> None:
    """Raw frames go below the compressor, into the age stream like everything else."""
    from backupagent.crypto import generate

    from .conftest import require_system

    require_system(shutil.which("age") is not None, "the age tool is missing (apt-get install age)")
    identity, recipient = generate()
    (tmp_path / "identity.txt").write_text(identity + "\n")
    site = tmp_path / "site"
    site.mkdir()
    photo = JPEG + os.urandom(2 << 20)
    (site / "photo.jpg").write_bytes(photo)
    (site / "page.php").write_text("<?php echo 'x';\n" * 5_000)
    out = io.BytesIO()
    write_archive(walk(site, [], _no_warning), out, recipients=[recipient])
    assert photo[4096:8192] not in out.getvalue()  # stored, but encrypted all the same
    clear = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "identity.txt")],
        input=out.getvalue(),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    unpack(clear, tmp_path / "out")
    assert tree(tmp_path / "out" / "files" / str(site).lstrip("/")) == tree(site)
