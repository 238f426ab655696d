"""A scripted FTP server on 127.0.0.1: it answers each command from a table, so a test
can make it silent, wrong or broken at exactly one step. Data connections are not
opened unless the script does it; it serves one connection at a time per thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path


class ScriptedSession:
    """One client connection: the commands it sent, in order (bytes read as Latin-1,
    so any byte a client sends is kept)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.commands: list[str] = []
        self.passive: socket.socket | None = None  # the listener of the last EPSV

    def send(self, line: str) -> None:
        self.conn.sendall(line.encode("latin-1") + b"\r\n")

    def open_passive(self) -> str:
        """Listen for a data connection; the 229 reply that says where."""
        self.passive = socket.create_server(("127.0.0.1", 0))
        self.passive.settimeout(10)
        return f"229 Entering Extended Passive Mode (|||{self.passive.getsockname()[1]}|)"

    def send_data(self, data: bytes) -> str:
        """Send `data` over the data connection, then the 226 that ends it."""
        assert self.passive is not None, "EPSV first"
        self.send("150 Here it comes.")
        conn, _ = self.passive.accept()
        with conn:
            conn.sendall(data)
        self.passive.close()
        self.passive = None
        return "226 Done."


def serve(data: bytes) -> Callable[[ScriptedSession, str], str]:
    """An answer to NLST, LIST or RETR that sends `data` over the EPSV connection."""
    return lambda session, _arg: session.send_data(data)


# a reply line, None to say nothing (a server that hangs), or a function of the
# session and the argument that returns either
Answer = str | None | Callable[[ScriptedSession, str], str | None]

DEFAULT_SCRIPT: dict[str, Answer] = {
    "USER": "331 Password please.",
    "PASS": "230 Logged in.",
    "TYPE": "200 Type set.",
    "CWD": "250 Directory changed.",
    "MKD": "257 Created.",
    "PWD": '257 "/" is the current directory.',
    "FEAT": "211-Features:\r\n SIZE\r\n211 End",
    "PORT": "200 PORT ok.",
    "EPSV": lambda session, _arg: session.open_passive(),
    "EPRT": "200 EPRT ok.",
    "SIZE": "550 No such file.",
    "DELE": "550 No such file.",
    "NOOP": "200 NOOP ok.",
    "QUIT": "221 Bye.",
}


class ScriptedFtp:
    """Serve `script` (merged over DEFAULT_SCRIPT) until stopped."""

    def __init__(
        self, script: dict[str, Answer] | None = None, banner: str | None = "220 scripted"
    ) -> None:
        self.script = {**DEFAULT_SCRIPT, **(script or {})}
        self.banner = banner
        self.sessions: list[ScriptedSession] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    @property
    def logins(self) -> int:
        return sum(1 for s in self.sessions for c in s.commands if c.startswith("PASS "))

    def commands(self) -> list[str]:
        return [c for s in self.sessions for c in s.commands]

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            session = ScriptedSession(conn)
            self.sessions.append(session)
            thread = threading.Thread(target=self._serve, args=(session,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, session: ScriptedSession) -> None:
        conn = session.conn
        conn.settimeout(0.1)
        buffer = b""
        try:
            if self.banner is not None:  # None: accept, then say nothing
                session.send(self.banner)
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n" in buffer:
                    raw, buffer = buffer.split(b"\r\n", 1)
                    line = raw.decode("latin-1")
                    session.commands.append(line)
                    verb, _, arg = line.partition(" ")
                    answer = self.script.get(verb.upper(), "502 Not implemented.")
                    if callable(answer):
                        answer = answer(session, arg)
                    if answer is not None:
                        session.send(answer)
                    if verb.upper() == "QUIT":
                        return
        except OSError:
            return
        finally:
            conn.close()

    def __enter__(self) -> ScriptedFtp:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


def jobs_toml(tmp_path: Path, server: ScriptedFtp, dest: str = "") -> Path:
    """A jobs.toml in `tmp_path`: job `www` (a one-file site) to destination `evil`,
    this server; `dest` adds keys to the destination."""
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "index.php").write_text("<?php\n")
    path = tmp_path / "jobs.toml"
    path.write_text(f"""
[agent]
state_dir = "{tmp_path}/state"
log_dir = "{tmp_path}/log"
spool_dir = "{tmp_path}/spool"

[destinations.evil]
type = "ftp"
host = "127.0.0.1"
port = {server.port}
password = "x"
retry_wait = 0.1
{dest}

[jobs.www]
destination = "evil"
sources = ["{tmp_path}/site"]
""")
    return path
