"""FTP/FTPS destination over ftplib, logging the whole dialogue.

Every command and every reply is one structlog event, `FTP client command: X` or
`FTP server reply: X`, with mode and code fields; the dialogue is also kept as
plain data so that diagnosis.py can explain a failure from it.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import socket
import ssl
from collections.abc import Callable
from typing import Any, BinaryIO

import structlog

from backupagent.config import FtpDestination
from backupagent.diagnosis import Failure, FailureKind, Line, ProbeResult, mode_name

BLOCK_SIZE = 256 << 10
# seconds to wait for the reply after the last byte of an upload; servers may take a
# while to flush or check a large file (a destination setting in a later version)
FINAL_REPLY_TIMEOUT = 120.0


class FtpError(Exception):
    """A failure this module detected itself (as opposed to ftplib or the OS)."""


class ControlConnectError(FtpError):
    """The control connection could not be opened."""

    def __init__(self, address: str, cause: BaseException, timeout: float) -> None:
        self.address = address
        self.reason = _describe_os_error(cause, timeout)
        super().__init__(f"{address}: {self.reason}")


class DataConnectionError(FtpError):
    """The data connection could not be opened (passive connect or active accept)."""

    def __init__(self, address: str | None, cause: BaseException, timeout: float | None) -> None:
        self.address = address
        self.reason = _describe_os_error(cause, timeout)
        where = f" to {address}" if address else ""
        super().__init__(f"data connection{where}: {self.reason}")


class DataTransferError(FtpError):
    """The data connection broke or stalled after it was open."""


# everything an FTP operation may raise that means "the transfer failed"
TRANSFER_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ftplib.Error, FtpError)


def _describe_os_error(exc: BaseException, timeout: float | None = None) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out after {timeout:g}s" if timeout else "timed out"
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _DialogueMixin:
    """Hooks into ftplib's line I/O to log and record every command and reply."""

    passiveserver: bool | int
    timeout: float | None

    def __init__(self, log: Any, dialogue: list[Line], **kwargs: Any) -> None:
        self.log = log
        self.dialogue = dialogue
        self._data_target: str | None = None  # the passive address being connected to
        super().__init__(**kwargs)

    def putcmd(self, line: str) -> None:
        shown = "PASS ****" if line[:5].upper() == "PASS " else line
        self._record("command", shown)
        self._data_target = None
        super().putcmd(line)  # type: ignore[misc]

    def getmultiline(self) -> str:
        reply = super().getmultiline()  # type: ignore[misc]
        self._record("reply", reply)
        return reply

    def _record(self, direction: str, text: str) -> None:
        line = Line(direction, text)
        self.dialogue.append(line)
        who = "client command" if direction == "command" else "server reply"
        self.log.debug(f"FTP {who}: {text}", direction=direction, code=line.code)

    def makepasv(self) -> tuple[str, int]:
        host, port = super().makepasv()  # type: ignore[misc]
        self._data_target = f"{host}:{port}"
        self.log.debug(f"FTP data connection: connecting to {self._data_target}")
        return host, port

    def makeport(self) -> socket.socket:
        sock = super().makeport()  # type: ignore[misc]
        host = self.sock.getsockname()[0]  # type: ignore[attr-defined]  # what PORT advertised
        port = sock.getsockname()[1]
        self.log.debug(f"FTP data connection: waiting for the server on {host}:{port}")
        return sock

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, Any]:
        try:
            return super().ntransfercmd(cmd, rest)  # type: ignore[misc]
        except (ftplib.Error, EOFError, ssl.SSLError):
            raise
        except OSError as exc:
            last = self.dialogue[-1] if self.dialogue else None
            if self.passiveserver and self._data_target is not None:
                error = DataConnectionError(self._data_target, exc, self.timeout)
            elif not self.passiveserver and last is not None and str(last.code).startswith("1"):
                # the server never connected back
                error = DataConnectionError(None, exc, self.timeout)
            else:
                raise
            self.log.warning(f"FTP {error}")
            raise error from exc


class LoggingFTP(_DialogueMixin, ftplib.FTP):
    pass


class LoggingFTPS(_DialogueMixin, ftplib.FTP_TLS):
    pass


class ImplicitFTPS(LoggingFTPS):
    """FTPS where TLS starts before the server's greeting (usually port 990)."""

    def connect(self, host: str = "", port: int = 0, timeout: float = -999, source_address=None):  # type: ignore[override]
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((host, port), self.timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


_CLIENTS: dict[str, Any] = {  # tls setting -> ftplib class with the dialogue hooks
    "none": LoggingFTP,
    "explicit": LoggingFTPS,
    "implicit": ImplicitFTPS,
}


class FtpSession:
    """One logged-in FTP connection in one data-connection mode."""

    def __init__(self, dest: FtpDestination, passive: bool) -> None:
        self.dest = dest
        self.passive = passive
        self.dialogue: list[Line] = []
        self._data_conn: socket.socket | None = None
        self.log = structlog.get_logger("backupagent.ftp").bind(mode=mode_name(passive))
        kwargs: dict[str, Any] = {"timeout": dest.timeout}
        if dest.tls != "none":
            kwargs["context"] = ssl.create_default_context()
        self.ftp: ftplib.FTP = _CLIENTS[dest.tls](self.log, self.dialogue, **kwargs)

    def open(self) -> FtpSession:
        address = f"{self.dest.host}:{self.dest.effective_port}"
        self.log.debug(f"FTP connecting to {address}", tls=self.dest.tls)
        try:
            self.ftp.connect(self.dest.host, self.dest.effective_port, self.dest.timeout)
        except ssl.SSLError:
            raise
        except OSError as exc:
            raise ControlConnectError(address, exc, self.dest.timeout) from exc
        self.ftp.login(self.dest.user, self.dest.read_password() or "")
        if isinstance(self.ftp, ftplib.FTP_TLS):
            self.ftp.prot_p()
        self.ftp.set_pasv(self.passive)
        return self

    def close(self) -> None:
        """QUIT politely; fall back to dropping the connection."""
        try:
            if self.ftp.sock is not None:
                self.ftp.quit()
        except (OSError, EOFError, ftplib.Error):
            pass
        finally:
            self.ftp.close()

    def __enter__(self) -> FtpSession:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def change_directory(self, path: str, create: bool = True) -> None:
        """CWD to `path`, creating missing components (MKD) when `create` is set."""
        try:
            self.ftp.cwd(path)
            return
        except ftplib.error_perm:
            if not create:
                raise
        if path.startswith("/"):
            self.ftp.cwd("/")
        for part in [p for p in path.split("/") if p]:
            try:
                self.ftp.cwd(part)
            except ftplib.error_perm:
                self.ftp.mkd(part)
                self.ftp.cwd(part)

    def upload(
        self, source: BinaryIO, name: str, progress: Callable[[int], None] | None = None
    ) -> int:
        """STOR `source` as `name` in binary mode; returns the bytes sent."""
        self.ftp.voidcmd("TYPE I")
        sent = 0
        conn, _ = self.ftp.ntransfercmd(f"STOR {name}")
        self._data_conn = conn
        with conn:
            try:
                while block := source.read(BLOCK_SIZE):
                    conn.sendall(block)
                    sent += len(block)
                    if progress:
                        progress(len(block))
                if isinstance(conn, ssl.SSLSocket):
                    conn.unwrap()
            except OSError as exc:
                reason = _describe_os_error(exc, self.dest.timeout)
                raise DataTransferError(f"after {sent} bytes: {reason}") from exc
            finally:
                self._data_conn = None
        # the server may still be writing what sat in the buffers: give 226 longer
        control = self.ftp.sock
        assert control is not None
        control.settimeout(max(self.dest.timeout, FINAL_REPLY_TIMEOUT))
        try:
            self.ftp.voidresp()
        finally:
            control.settimeout(self.dest.timeout)
        return sent

    def interrupt(self) -> None:
        """From another thread: break off whatever this session is waiting for."""
        for sock in (self._data_conn, self.ftp.sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def upload_bytes(self, data: bytes, name: str) -> None:
        self.upload(io.BytesIO(data), name)

    def download(self, name: str, sink: Callable[[bytes], None]) -> None:
        self.ftp.retrbinary(f"RETR {name}", sink, blocksize=BLOCK_SIZE)

    def rename(self, old: str, new: str) -> None:
        self.ftp.rename(old, new)

    def size(self, name: str) -> int | None:
        self.ftp.voidcmd("TYPE I")
        return self.ftp.size(name)

    def delete(self, name: str) -> None:
        self.ftp.delete(name)

    def names(self) -> list[str]:
        """Plain file names in the current directory (NLST)."""
        try:
            return [n.rsplit("/", 1)[-1] for n in self.ftp.nlst()]
        except ftplib.error_perm as exc:
            # some servers answer an empty directory with 550/450 "No files found"
            if str(exc)[:3] in ("550", "450"):
                return []
            raise

    def listing(self) -> list[str]:
        """A LIST of the current directory: the tiny transfer used to probe a mode."""
        lines: list[str] = []
        self.ftp.retrlines("LIST", lines.append)
        return lines

    def failure(self, exc: BaseException) -> Failure:
        """Describe an exception raised by this session as plain data for diagnosis."""
        dialogue = tuple(self.dialogue)
        kind, error, address = _classify_exception(exc, self.dest.timeout)
        return Failure(kind, self.passive, dialogue, error, address)


def _classify_exception(exc: BaseException, timeout: float) -> tuple[FailureKind, str, str | None]:
    """(kind, error text, unreachable address) of an exception from an FTP session."""
    match exc:
        case ControlConnectError():
            return FailureKind.CONTROL_CONNECT, exc.reason, exc.address
        case DataConnectionError():
            return FailureKind.DATA_CONNECT, exc.reason, exc.address
        case DataTransferError():
            return FailureKind.DATA_TRANSFER, str(exc), None
        case ssl.SSLError() | ssl.CertificateError():
            return FailureKind.TLS, str(exc), None
        case ftplib.Error():
            return FailureKind.REPLY, str(exc), None
        case EOFError() | OSError():
            return FailureKind.CONTROL_LOST, _describe_os_error(exc, timeout) or "closed", None
    return FailureKind.OTHER, f"{type(exc).__name__}: {exc}", None


def probe(dest: FtpDestination, passive: bool) -> ProbeResult:
    """Log in and list the destination directory in one mode: does that data path work?"""
    s = FtpSession(dest, passive)
    try:
        s.open()
        with contextlib.suppress(ftplib.error_perm):  # not created yet: list the login dir
            s.change_directory(dest.directory, create=False)
        entries = s.listing()
        return ProbeResult(passive, True, f"{len(entries)} entries listed")
    except TRANSFER_ERRORS as exc:
        failure = s.failure(exc)
        return ProbeResult(passive, False, failure.error or type(exc).__name__)
    finally:
        s.close()
