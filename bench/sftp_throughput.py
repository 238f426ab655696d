"""SFTP upload throughput over loopback: OpenSSH's `sftp` client against paramiko and
asyncssh, the same file to the same sshd, alternated round by round.

Run as root (it starts its own sshd on 127.0.0.1):  .venv/bin/python bench/sftp_throughput.py
Prints MB/s per round and the median of each, and each library's ratio to OpenSSH.
"asyncssh" is its own `put` with its defaults; "backupagent" is destinations/sftp.py
(asyncssh, AES-GCM preferred, IN_FLIGHT requests of BLOCK bytes) publishing the file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sshd import Sshd, missing, running_sshd


def openssh(server: Sshd, source: Path, target: str) -> None:
    batch = server.directory / "batch"
    batch.write_text(f"put {source} {target}\n")
    subprocess.run(
        [
            "sftp",
            "-q",
            "-b",
            str(batch),
            "-P",
            str(server.port),
            "-i",
            str(server.key_file),
            "-o",
            f"UserKnownHostsFile={server.directory}/known_hosts",
            "-o",
            "StrictHostKeyChecking=accept-new",
            f"{server.user}@127.0.0.1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def with_paramiko(server: Sshd, source: Path, target: str) -> None:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        server.port,
        server.user,
        key_filename=str(server.key_file),
        look_for_keys=False,
        allow_agent=False,
    )
    try:
        sftp = client.open_sftp()
        with source.open("rb") as handle, sftp.open(target, "wb") as remote:
            remote.set_pipelined(True)
            while block := handle.read(1 << 20):
                remote.write(block)
        sftp.close()
    finally:
        client.close()


def with_asyncssh(server: Sshd, source: Path, target: str) -> None:
    import asyncssh

    async def put() -> None:
        async with (
            asyncssh.connect(
                "127.0.0.1",
                server.port,
                username=server.user,
                client_keys=[str(server.key_file)],
                known_hosts=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(str(source), target)

    asyncio.run(put())


def with_backupagent(server: Sshd, source: Path, target: str) -> None:
    """The product's own path: destinations/sftp.py publishing a volume."""
    from backupagent.config import SftpDestination
    from backupagent.destinations.sftp import Sftp

    settings = SftpDestination(
        type="sftp",
        host="127.0.0.1",
        port=server.port,
        user=server.user,
        key_file=server.key_file,
        host_key=server.fingerprint,
        directory=str(Path(target).parent),
    )
    destination = Sftp("bench", settings)
    try:
        destination.publish_file(source, Path(target).name, "")
    finally:
        destination.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if (why := missing()) is not None:
        print(f"cannot run: {why}")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "upload.bin"
        with source.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(1 << 20))
        size = source.stat().st_size
        uploaders: dict[str, Callable[[Sshd, Path, str], None]] = {
            "openssh sftp": openssh,
            "paramiko": with_paramiko,
            "asyncssh": with_asyncssh,
            "backupagent": with_backupagent,
        }
        figures: dict[str, list[float]] = {name: [] for name in uploaders}
        with running_sshd(work / "sshd") as server:
            for round_ in range(1, args.rounds + 1):
                for name, upload in uploaders.items():
                    target = str(server.root / f"{name.replace(' ', '-')}.bin")
                    started = time.perf_counter()
                    with contextlib.redirect_stderr(io.StringIO()):  # the agent's log lines
                        upload(server, source, target)
                    seconds = time.perf_counter() - started
                    assert Path(target).stat().st_size == size
                    Path(target).unlink()
                    figures[name].append(size / seconds / 1e6)
                    print(f"round {round_} {name:13} {figures[name][-1]:8.1f} MB/s", flush=True)
        reference = statistics.median(figures["openssh sftp"])
        print(f"\n{args.size_mib} MiB over loopback, median of {args.rounds} rounds:")
        for name, values in figures.items():
            median = statistics.median(values)
            print(f"  {name:13} {median:8.1f} MB/s  {median / reference:6.0%} of openssh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
