"""An SFTP subsystem for tests: OpenSSH's sftp-server behind a relay that never answers
some requests (it drops them), as a hostile or broken server would. sshd runs it:
`silent_sftp.py [--type N]... [--stat-containing TEXT] -- /usr/lib/openssh/sftp-server`."""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys

STAT_REQUESTS = (7, 17)  # SSH_FXP_LSTAT, SSH_FXP_STAT


def _exactly(stream, size: int) -> bytes:  # type: ignore[no-untyped-def]
    data = b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            return b""
        data += more
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--type", type=int, action="append", default=[])
    parser.add_argument("--stat-containing")
    parser.add_argument("server")
    args = parser.parse_args()
    child = subprocess.Popen([args.server], stdin=subprocess.PIPE)  # replies go straight out
    assert child.stdin is not None
    requests = sys.stdin.buffer
    while head := _exactly(requests, 4):
        body = _exactly(requests, struct.unpack(">I", head)[0])
        if not body:
            break
        if body[0] in args.type:
            continue
        if args.stat_containing and body[0] in STAT_REQUESTS:
            (length,) = struct.unpack(">I", body[5:9])
            if args.stat_containing.encode() in body[9 : 9 + length]:
                continue
        child.stdin.write(head + body)
        child.stdin.flush()
    child.stdin.close()
    child.wait()


if __name__ == "__main__":
    main()
