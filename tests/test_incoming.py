"""incoming.VolumeStream: a backup's volumes read as one stream, one ahead, each checked
against its manifest before it is used; never more than two in the spool."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from backupagent.destinations.base import CutShort, PartialFile, SpoolFull
from backupagent.destinations.local import LocalDirectory
from backupagent.ftpserver import LocalFtpServer
from backupagent.incoming import (
    HELD,
    Spans,
    VolumeMismatch,
    VolumeStream,
    check_room,
    spool_needed,
)
from backupagent.manifest import Volume

from .conftest import WriteConfig
from .helpers import small_disk, wait_for

VOLUME = 256 << 10


def _volumes(where: Path, count: int) -> tuple[list[Volume], bytes]:
    """`count` volumes of random bytes in `where`, and what they make together."""
    where.mkdir(mode=0o700)
    volumes, whole = [], b""
    for n in range(1, count + 1):
        data = os.urandom(VOLUME - n)  # sizes differ: a mix-up shows
        name = f"www-x.tar.zst.{n:04d}"
        (where / name).write_bytes(data)
        volumes.append(Volume(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
        whole += data
    return volumes, whole


def _held(spool: Path) -> int:
    return len(list(spool.iterdir()))


def test_the_volumes_read_as_one_stream_with_two_in_the_spool_at_most(tmp_path: Path) -> None:
    """The reader goes slowly (64 KiB at a time) and the local destination is fast: a
    download that ran ahead of its slot would show as a third file in the spool. While
    the first volume is read, the second arrives (the download runs one ahead)."""
    volumes, whole = _volumes(tmp_path / "nas", 12)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    read, most = bytearray(), 0
    with VolumeStream(LocalDirectory(tmp_path / "nas"), volumes, spool) as stream:
        read += stream.read(64 << 10)
        wait_for(lambda: (spool / volumes[1].name).exists(), "the second volume")
        most = _held(spool)
        while block := stream.read(64 << 10):
            read += block
            most = max(most, _held(spool))
    assert bytes(read) == whole
    assert most == HELD == 2  # one read, one downloaded ahead: never a third
    assert _held(spool) == 0


@pytest.mark.parametrize("damage", ["one byte changed", "cut short", "longer"])
def test_a_volume_unlike_its_manifest_stops_the_stream_at_its_start(
    tmp_path: Path, damage: str
) -> None:
    volumes, whole = _volumes(tmp_path / "nas", 5)
    third = tmp_path / "nas" / volumes[2].name
    data = bytearray(third.read_bytes())
    if damage == "one byte changed":
        data[-1] ^= 1
    elif damage == "cut short":
        del data[-10:]
    else:
        data += b"more"
    third.write_bytes(bytes(data))
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    read = bytearray()
    with (
        VolumeStream(LocalDirectory(tmp_path / "nas"), volumes, spool) as stream,
        pytest.raises(VolumeMismatch, match=volumes[2].name),
    ):
        while block := stream.read(64 << 10):
            read += block
    assert bytes(read) == whole[: volumes[0].size + volumes[1].size]  # not a byte of it
    assert _held(spool) == 0


def test_the_spool_room_is_two_volumes_whatever_the_backup(tmp_path: Path) -> None:
    volumes = [Volume(name=f"v.{n:04d}", size=size, sha256="0" * 64) for n, size in
               enumerate([10, 50, 30, 50, 5])]  # fmt: skip
    assert spool_needed(volumes) == 100
    assert spool_needed(volumes[:1]) == 10
    with pytest.raises(SpoolFull, match=r"too small: \d+ bytes free in .*, \d+ needed \(x\)"):
        check_room(tmp_path, 1 << 62, "x")
    check_room(tmp_path, 1, "x")


def test_a_full_spool_is_said_to_be_this_hosts_never_the_servers(tmp_path: Path) -> None:
    """Issue 30 saw a full spool reported as the server's fault ("the server holds only
    N of the M bytes ... it was cut short"): ENOSPC was an OSError, which the FTP and
    SFTP retries take for a network error."""
    volumes, _ = _volumes(tmp_path / "nas", 2)
    with small_disk(tmp_path / "spool", "128k") as spool:
        destination = LocalDirectory(tmp_path / "nas")
        with pytest.raises(SpoolFull) as info:
            destination.download(volumes[0].name, spool / volumes[0].name, volumes[0].size)
        said = str(info.value)
        assert said.startswith("the spool on this host is full: ")
        assert f"bytes free in {spool}" in said and "not the server's" in said
        assert "cut short" not in said


def test_a_full_spool_over_ftp_is_not_taken_for_a_network_error(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    from backupagent.destinations import open_destination

    # retry_wait shortened: a full disk is never retried, and were it taken for a
    # network error, the retries would end in the same CutShort however long they wait
    config = write_config(dest="retry_wait = 0.1")
    folder = ftp_server.root / "backups/site"
    folder.mkdir(parents=True)
    (folder / "v.tar.zst.0001").write_bytes(os.urandom(1 << 20))
    destination = open_destination(config, "www")
    try:
        with small_disk(tmp_path / "spool", "256k") as spool, pytest.raises(SpoolFull) as info:
            destination.download("v.tar.zst.0001", spool / "v.tar.zst.0001", 1 << 20)
    finally:
        destination.close()
    assert str(info.value).startswith("the spool on this host is full: ")


def test_a_download_is_hashed_as_written_and_across_a_resume(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    target = tmp_path / "v"
    partial = PartialFile(target, len(data))
    first = partial.attempt()
    assert first is not None
    with first:
        first(data[:100_000])
    again = PartialFile(target, len(data))  # a new process finds the partial file
    rest = again.attempt()
    assert rest is not None and rest.offset == 100_000
    with rest:
        rest(data[100_000:])
    assert again.finish() == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data


SPANS = [
    [(0, 10)],
    [(5, VOLUME - 3), (VOLUME + 100, 3 * VOLUME - 10)],  # across a volume's end
    [(2 * VOLUME - 5, 2 * VOLUME + 5), (3 * VOLUME, 4 * VOLUME - 10)],
    [(4 * VOLUME - 20, 4 * VOLUME - 10)],  # all skipped but the end of the last
]


@pytest.mark.parametrize("spans", SPANS)
def test_spans_of_the_stream_read_as_one_and_the_rest_skipped(
    tmp_path: Path, spans: list[tuple[int, int]]
) -> None:
    volumes, whole = _volumes(tmp_path / "nas", 4)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    with VolumeStream(LocalDirectory(tmp_path / "nas"), volumes, spool) as stream:
        reader = Spans(stream, spans)
        got = b"".join(iter(lambda: reader.read(7000), b""))
    assert got == b"".join(whole[a:b] for a, b in spans)
    assert _held(spool) == 0


def test_a_span_past_the_end_of_the_stream_is_an_error(tmp_path: Path) -> None:
    volumes, whole = _volumes(tmp_path / "nas", 2)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    with VolumeStream(LocalDirectory(tmp_path / "nas"), volumes, spool) as stream:
        reader = Spans(stream, [(10, 20), (len(whole) - 5, len(whole) + 50)])
        assert reader.read() == whole[10:20]
        assert reader.read() == whole[-5:]
        with pytest.raises(CutShort, match="ends before the part the content index names"):
            reader.read()
