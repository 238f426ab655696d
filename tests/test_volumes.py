"""Cutting the archive stream into volumes, and the two-volume bound on the spool."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from backupagent.volumes import Pipeline, Volume, VolumeWriter, volume_name
from backupagent.workers import Cancelled


@pytest.mark.parametrize(
    ("size", "writes", "expected"),
    [
        (10, [b"abc"], [3]),  # shorter than one volume
        (10, [b"0123456789"], [10]),  # exactly one
        (10, [b"0123456789", b"x"], [10, 1]),  # one byte over
        (4, [b"0123456789"], [4, 4, 2]),  # one write spanning three volumes
        (3, [b"ab", b"cd", b"ef", b"g"], [3, 3, 1]),  # writes straddling the cuts
    ],
)
def test_writer_cuts_at_the_size(
    tmp_path: Path, size: int, writes: list[bytes], expected: list[int]
) -> None:
    handed: list[Volume] = []
    contents: list[bytes] = []

    def hand_over(volume: Volume) -> None:
        handed.append(volume)
        contents.append(volume.path.read_bytes())

    writer = VolumeWriter(
        tmp_path, "a.tar.zst", size, hand_over, threading.Semaphore(99), threading.Event()
    )
    for data in writes:
        assert writer.write(data) == len(data)
    writer.close()
    assert [v.size for v in handed] == expected
    assert [v.index for v in handed] == list(range(1, len(expected) + 1))
    assert [v.name for v in handed] == [volume_name("a.tar.zst", v.index) for v in handed]
    assert b"".join(contents) == b"".join(writes)


def test_writer_never_opens_a_third_volume_while_two_are_unsent(tmp_path: Path) -> None:
    stop = threading.Event()
    handed: list[Volume] = []

    def hand_over(volume: Volume) -> None:  # nobody sends: the slots are never freed
        handed.append(volume)
        if len(handed) == 2:
            stop.set()

    writer = VolumeWriter(tmp_path, "a", 100, hand_over, threading.Semaphore(2), stop)
    writer.write(b"x" * 200)
    with pytest.raises(Cancelled):
        writer.write(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.0001", "a.0002"]


def test_pipeline_sends_in_order_and_leaves_the_spool_empty(tmp_path: Path) -> None:
    received: list[tuple[int, bytes]] = []
    spooled: list[int] = []

    def send(volume: Volume) -> None:
        spooled.append(len(list(tmp_path.iterdir())))
        received.append((volume.index, volume.path.read_bytes()))
        assert volume.sha256 == hashlib.sha256(received[-1][1]).hexdigest()

    data = os.urandom(10_000)
    pipeline = Pipeline(tmp_path, "a", 1000, send)
    for i in range(0, len(data), 333):
        pipeline.writer.write(data[i : i + 333])
    sent = pipeline.finish()
    assert [i for i, _ in received] == list(range(1, 11))
    assert b"".join(chunk for _, chunk in received) == data
    assert [v.index for v in sent] == list(range(1, 11))
    assert max(spooled) <= 2
    assert list(tmp_path.iterdir()) == []


def test_a_failed_send_stops_the_writer_and_is_raised(tmp_path: Path) -> None:
    def send(volume: Volume) -> None:
        if volume.index == 2:
            raise ConnectionError("server went away")

    pipeline = Pipeline(tmp_path, "a", 100, send)
    with pytest.raises(Cancelled):
        for _ in range(1000):  # far more than the sender lets through
            pipeline.writer.write(b"z" * 50)
    assert isinstance(pipeline.abort(), ConnectionError)
    assert [v.index for v in pipeline.sent] == [1]
    assert list(tmp_path.iterdir()) == []


def test_abort_after_the_archiver_failed_removes_what_was_spooled(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, "a", 100, lambda volume: None)
    pipeline.writer.write(b"q" * 150)  # one volume handed over, one half written
    assert pipeline.abort() is None
    assert list(tmp_path.iterdir()) == []


def test_abort_sends_no_queued_volume(tmp_path: Path) -> None:
    sending, release = threading.Event(), threading.Event()
    sent: list[int] = []

    def send(volume: Volume) -> None:
        sent.append(volume.index)
        if volume.index == 1:
            sending.set()
            assert release.wait(30)

    pipeline = Pipeline(tmp_path, "a", 100, send)
    pipeline.writer.write(b"x" * 200)  # volume 1 is being sent, volume 2 waits its turn
    assert sending.wait(30)
    aborter = threading.Thread(target=pipeline.abort)
    aborter.start()
    assert pipeline.writer.stop.wait(30)  # abort has begun: now let volume 1 finish
    release.set()
    aborter.join(30)
    assert sent == [1]
    assert list(tmp_path.iterdir()) == []


def test_cut_hands_over_a_short_volume_and_the_next_write_starts_another(
    tmp_path: Path,
) -> None:
    handed: list[Volume] = []
    writer = VolumeWriter(
        tmp_path, "a", 100, handed.append, threading.Semaphore(99), threading.Event()
    )
    writer.write(b"x" * 150)
    writer.cut()
    writer.cut()  # nothing written since: no empty volume
    writer.write(b"y" * 30)
    writer.close()
    assert [(v.index, v.size) for v in handed] == [(1, 100), (2, 50), (3, 30)]
    assert handed[2].path.read_bytes() == b"y" * 30
