"""A throwaway pyftpdlib server on loopback, for `backupagent demo` and the fast tests.

`block_passive` makes the server behave like one behind a firewall that rejects
connections to its passive port range: it answers PASV/EPSV with a port that is
bound but not listening, so the client's data connection is refused.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
from pyftpdlib.handlers.ftp.dispatchers import PassiveDTP
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer


class _BlockedPassiveDTP(PassiveDTP):
    """Advertises a passive port that is bound but never listening: connecting is refused."""

    def listen(self, num: int) -> None:
        pass


class LocalFtpServer:
    """pyftpdlib serving `root` to one user, run in a background thread."""

    def __init__(
        self,
        root: Path,
        user: str = "backup",
        password: str = "demo-secret",
        host: str = "127.0.0.1",
        throttle: int | None = None,
    ) -> None:
        """`throttle`: bytes per second the server reads from a data connection (slow link)."""
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
        outer = self

        class Handler(FTPHandler):
            banner = "backupagent test FTP server ready."
            permit_foreign_addresses = False

            def ftp_PASV(self, line: str) -> None:
                self.passive_dtp = _BlockedPassiveDTP if outer._block.is_set() else PassiveDTP
                super().ftp_PASV(line)

            def ftp_EPSV(self, line: str) -> None:
                self.passive_dtp = _BlockedPassiveDTP if outer._block.is_set() else PassiveDTP
                super().ftp_EPSV(line)

        Handler.authorizer = authorizer
        if throttle:

            class SlowDTP(ThrottledDTPHandler):
                read_limit = throttle

            Handler.dtp_handler = SlowDTP
        # an IOLoop of its own: pyftpdlib's default is one shared by every server in the process
        self.server = FTPServer((host, 0), Handler, ioloop=IOLoop())
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
