"""A scripted FTP server on 127.0.0.1: it answers each command from a table, so a test
can make it silent, wrong or broken at exactly one step. Data connections are not
opened unless the script does it; it serves one connection at a time per thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class ScriptedSession:
    """One client connection: the commands it sent, in order."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.commands: list[str] = []

    def send(self, line: str) -> None:
        self.conn.sendall(line.encode("latin-1") + b"\r\n")


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
