"""A throwaway pyftpdlib server on loopback, for `backupagent demo` and the fast tests.

`block_passive` makes the server behave like one behind a firewall that rejects
connections to its passive port range: it answers PASV/EPSV with a port that is
bound but not listening, so the client's data connection is refused.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import DTPHandler, FTPHandler, ThrottledDTPHandler
from pyftpdlib.handlers.ftp.dispatchers import PassiveDTP
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer


class _BlockedPassiveDTP(PassiveDTP):
    """Advertises a passive port that is bound but never listening: connecting is refused."""

    def listen(self, num: int) -> None:
        pass


class _CappedFile:
    """A file being uploaded that hits a full disk once `room` bytes are written."""

    def __init__(self, file: Any, room: int) -> None:
        self._file = file
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            self._file.write(data[: max(self._room, 0)])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class _CutFile:
    """A file being downloaded that ends early, as if the connection had broken."""

    def __init__(self, file: Any, room: int) -> None:
        self._file = file
        self._room = room

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(min(size, self._room) if size >= 0 else self._room)
        self._room -= len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class _CuttingFS(AbstractedFS):
    """Opens a file for reading cut at the handler's `cut_at`, once, when it is set."""

    def open(self, filename: str, mode: str) -> Any:
        handle = super().open(filename, mode)
        cut = getattr(self.cmd_channel, "cut_at", None)
        if cut is None or "r" not in mode:
            return handle
        self.cmd_channel.cut_at = None
        return _CutFile(handle, cut)


def _limited_fs(root: Path, limit: int) -> type[AbstractedFS]:
    """A filesystem whose uploads fail with ENOSPC once `root` holds `limit` bytes."""

    class LimitedFS(AbstractedFS):
        def open(self, filename: str, mode: str) -> Any:
            handle = super().open(filename, mode)
            if not any(flag in mode for flag in "wa+"):
                return handle
            used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
            # an overwrite or REST frees what it replaces: only growth uses room
            return _CappedFile(handle, limit - used + (handle.tell() if "a" in mode else 0))

    return LimitedFS


class _FullDiskDTP(DTPHandler):
    """Answers a failed write as vsftpd does, and closes the data connection."""

    def handle_error(self) -> None:
        if isinstance(sys.exc_info()[1], _FileReadWriteError):
            self._resp = ("451 Failure writing to local file.", logging.getLogger().warning)
            self.close()
        else:
            super().handle_error()


class LocalFtpServer:
    """pyftpdlib serving `root` to one user, run in a background thread."""

    def __init__(
        self,
        root: Path,
        user: str = "backup",
        password: str = "demo-secret",
        host: str = "127.0.0.1",
        throttle: int | None = None,
        *,
        port: int = 0,
        refuse_epsv: bool = False,
        masquerade_address: str | None = None,
        permit_foreign_addresses: bool = False,
        checksum: str | None = None,
        checksum_lies: bool = False,
        tls_cert: tuple[Path, Path] | None = None,
        disk_limit: int | None = None,
        faults: dict[str, list[str | None]] | None = None,
    ) -> None:
        """A server with behaviours the tests need.

        `throttle`: bytes per second read from a data connection (a slow link);
        `refuse_epsv`: answer EPSV with 500, like servers that only know PASV;
        `masquerade_address`: the address given in 227 replies (a NATed server);
        `checksum`: offer "XSHA256", "XMD5" or "HASH" (SHA-256) in FEAT and answer it,
        with a wrong digest if `checksum_lies`;
        `tls_cert`: (certificate, key) files for explicit FTPS (needs pyOpenSSL);
        `disk_limit`: uploads fail with "no space left" once the root holds this much;
        `faults`: per command verb, what to do at its 1st, 2nd, ... use: a reply line to
        answer instead (then the session closes, as vsftpd's does after an OOPS),
        "no-reply" to carry the command out and close without answering, "close-after"
        to carry it out, answer, then close, "cut:N" (RETR) to send only N bytes of
        the file, None to behave (later uses behave too).
        """
        self.root = root
        self.user = user
        self.password = password
        # a handler of its own keeps pyftpdlib from installing its chatty stderr logging
        pylog = logging.getLogger("pyftpdlib")
        if not pylog.handlers:
            pylog.addHandler(logging.NullHandler())
        pylog.setLevel(logging.WARNING)
        authorizer = DummyAuthorizer()
        authorizer.add_user(user, password, str(root), perm="elradfmwMT")
        self._block = threading.Event()
        self.faults = faults or {}
        self.sent: list[tuple[str, int]] = []  # (file name, bytes) of each download
        outer = self

        base: type[FTPHandler] = FTPHandler
        if tls_cert is not None:
            from pyftpdlib.handlers import TLS_FTPHandler

            base = TLS_FTPHandler

        class Handler(base):  # type: ignore[valid-type,misc]
            banner = "backupagent test FTP server ready."
            proto_cmds: ClassVar[dict[str, dict[str, object]]] = {
                **base.proto_cmds,
                **{
                    name: {"perm": "r", "auth": True, "arg": True, "help": f"{name} <file>"}
                    for name in ("XSHA256", "XMD5", "HASH")
                },
            }

            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                if checksum == "HASH":
                    self._extra_feats.append("HASH SHA-256*;MD5")
                elif checksum:
                    self._extra_feats.append(checksum)

            def _digest(self, command: str, path: str, algorithm: str) -> str | None:
                if command != checksum:
                    self.respond("500 Command not understood.")
                    return None
                with open(path, "rb") as handle:  # pyftpdlib already mapped it to a real path
                    digest = hashlib.file_digest(handle, algorithm).hexdigest()
                return digest[::-1] if checksum_lies else digest

            def ftp_XSHA256(self, path: str) -> None:
                if (digest := self._digest("XSHA256", path, "sha256")) is not None:
                    self.respond(f"213 {digest}")

            def ftp_XMD5(self, path: str) -> None:
                if (digest := self._digest("XMD5", path, "md5")) is not None:
                    self.respond(f"213 {digest}")

            def ftp_HASH(self, path: str) -> None:
                if (digest := self._digest("HASH", path, "sha256")) is not None:
                    size = os.path.getsize(path)
                    self.respond(f"213 SHA-256 0-{size} {digest} {os.path.basename(path)}")

            def log_transfer(
                self,
                cmd: str,
                filename: str,
                receive: bool,
                completed: bool,
                elapsed: float,
                bytes: int,
            ) -> None:
                if not receive:
                    outer.sent.append((os.path.basename(filename), bytes))
                super().log_transfer(cmd, filename, receive, completed, elapsed, bytes)

            def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
                planned = outer.faults.get(cmd)
                action = planned.pop(0) if planned else None
                if action is None:
                    super().pre_process_command(line, cmd, arg)
                elif action == "no-reply":
                    self.respond = lambda *args, **kwargs: None  # type: ignore[method-assign]
                    super().pre_process_command(line, cmd, arg)
                    self.close()
                elif action.startswith("cut:"):
                    self.cut_at = int(action.split(":", 1)[1])
                    super().pre_process_command(line, cmd, arg)
                elif action == "close-after":
                    super().pre_process_command(line, cmd, arg)
                    self.close_when_done()
                else:
                    self.respond(action)
                    self.close_when_done()

            def ftp_PASV(self, line: str) -> None:
                self.passive_dtp = _BlockedPassiveDTP if outer._block.is_set() else PassiveDTP
                super().ftp_PASV(line)

            def ftp_EPSV(self, line: str) -> None:
                if refuse_epsv:
                    self.respond("500 Command not understood.")
                    return
                self.passive_dtp = _BlockedPassiveDTP if outer._block.is_set() else PassiveDTP
                super().ftp_EPSV(line)

        Handler.authorizer = authorizer
        if faults:
            Handler.abstracted_fs = _CuttingFS
            Handler.use_sendfile = False  # the cut file must be read, not sent by the kernel
        if disk_limit is not None:
            Handler.abstracted_fs = _limited_fs(root, disk_limit)
            Handler.dtp_handler = _FullDiskDTP
        Handler.masquerade_address = masquerade_address
        Handler.permit_foreign_addresses = permit_foreign_addresses
        if tls_cert is not None:
            Handler.certfile, Handler.keyfile = str(tls_cert[0]), str(tls_cert[1])
            Handler.tls_control_required = True
            Handler.tls_data_required = True
        if throttle:

            class SlowDTP(ThrottledDTPHandler):
                read_limit = throttle

            Handler.dtp_handler = SlowDTP
        # an IOLoop of its own: pyftpdlib's default is one shared by every server in the process
        self.server = FTPServer((host, port), Handler, ioloop=IOLoop())
        self.host, self.port = self.server.address[:2]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ftp-server", daemon=True)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self.server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        self.server.close_all()

    def block_passive(self, blocked: bool = True) -> None:
        """Make passive data connections fail (or work again)."""
        if blocked:
            self._block.set()
        else:
            self._block.clear()

    def start(self) -> LocalFtpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> LocalFtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
