"""ftplib with the dialogue logged and recorded, data connections opened as configured.

Every command and every reply is one structlog event, `FTP client command: X` or
`FTP server reply: X`, with mode and code fields; the dialogue is also kept as
plain data so that diagnosis.py can explain a failure from it.
"""

from __future__ import annotations

import contextlib
import errno
import ftplib
import hashlib
import io
import ipaddress
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from backupagent.config import FtpDestination
from backupagent.destinations.ftp import replies
from backupagent.destinations.ftp.diagnosis import NO_GREETING, Certificate, Line
from backupagent.destinations.ftp.replies import Reply, code_of

BLOCK_SIZE = 256 << 10
SENDFILE_CHUNK = 4 << 20  # bytes per sendfile call: progress is reported after each
# bounds on what a server may send on the control connection (ftplib bounds a line only)
MAX_LINE = 8192
MAX_REPLY_LINES = 1000
MAX_REPLY_BYTES = 256 << 10
MAX_LISTING_BYTES = 64 << 20  # an NLST of ~1,000,000 backup names
QUIT_WAIT = 5.0  # seconds to wait for the answer to QUIT


class FtpError(Exception):
    """A failure this module detected itself (as opposed to ftplib or the OS)."""


class ControlConnectError(FtpError):
    """The control connection could not be opened, or opened but no greeting came."""

    def __init__(
        self, address: str, cause: BaseException, timeout: float, connected: bool = False
    ) -> None:
        self.address = address
        self.reason = describe_os_error(cause, timeout)
        if connected and isinstance(cause, TimeoutError):
            self.reason = f"{NO_GREETING} within {timeout:g}s"
        super().__init__(f"{address}: {self.reason}")


class DataConnectionError(FtpError):
    """The data connection could not be opened (passive connect or active accept)."""

    def __init__(
        self,
        address: str | None,
        cause: BaseException,
        timeout: float | None,
        reason: str | None = None,
    ) -> None:
        self.address = address
        self.reason = reason or describe_os_error(cause, timeout)
        where = f" to {address}" if address else ""
        super().__init__(f"data connection{where}: {self.reason}")


class DataTransferError(FtpError):
    """The data connection broke or stalled after it was open; `closed`: by the server."""

    def __init__(self, message: str, closed: bool = False) -> None:
        super().__init__(message)
        self.closed = closed


class NoProgress(FtpError):
    """A resumed upload stopped where the previous attempt had: the server takes no more."""

    def __init__(self, name: str, stored: int, size: int, earlier: str) -> None:
        super().__init__(
            f"the upload of {name} stopped again at byte {stored} of {size}; "
            f"the attempt before ended with: {earlier}"
        )
        self.stored = stored
        self.size = size


class LocalReadError(Exception):
    """The local file being uploaded could not be read: not a network problem, no retry."""


def is_file(source: BinaryIO) -> bool:
    """A real file, which sendfile(2) can send."""
    try:
        source.fileno()
    except (OSError, AttributeError, ValueError):
        return False
    return isinstance(source, io.BufferedReader)


def read_block(source: BinaryIO) -> bytes:
    try:
        return source.read(BLOCK_SIZE)
    except OSError as exc:
        raise LocalReadError(f"reading {getattr(source, 'name', 'the upload')}: {exc}") from exc


# the peer closed the connection under us, as opposed to a stall (timeout)
CLOSED_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED})

# everything an FTP operation may raise that means "the transfer failed"
TRANSFER_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ftplib.Error, FtpError)


def describe_os_error(exc: BaseException, timeout: float | None = None) -> str:
    if isinstance(exc, EOFError):  # ftplib: the control connection ended
        return "the server closed the connection"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out after {timeout:g}s" if timeout else "timed out"
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _DialogueMixin:
    """Hooks into ftplib to log and record every command and reply, and to open data
    connections the way the destination asks (EPSV/PASV, active address and ports,
    separate connect and stall timeouts, TLS session reuse)."""

    passiveserver: bool | int
    timeout: float | None
    sock: socket.socket | None
    host: str
    af: int

    def __init__(
        self,
        log: Any,
        dialogue: list[Line],
        dest: FtpDestination,
        touched: set[str],
        **kwargs: Any,
    ) -> None:
        self.log = log
        self.dialogue = dialogue
        self.dest = dest
        self.epsv_refused = False  # learned in "auto": this server wants PASV
        self._data_target: str | None = None  # the passive address being connected to
        self._listening: str | None = None  # the address given in PORT/EPRT
        self._buffer = b""  # control-connection bytes read but not yet a line
        self.broken = False  # a reply timed out or broke off
        # names sent with STOR/APPE: from then on the server may hold the file (vsftpd
        # creates it before it connects back in active mode, and keeps it on failure)
        self.touched = touched
        super().__init__(**kwargs)

    def putline(self, line: str) -> None:
        """ftplib's, but names read from the server (undecodable bytes kept as
        surrogates) go back as the same bytes."""
        if "\r" in line or "\n" in line:
            raise ValueError("an illegal newline character should not be contained")
        if self.broken:  # its answer would be read as the answer to an earlier command
            raise ConnectionError("the control connection is out of step after a failed reply")
        assert self.sock is not None
        self.sock.sendall((line + "\r\n").encode("utf-8", "surrogateescape"))

    def getmultiline(self) -> str:
        """One whole reply, bounded: at most MAX_REPLY_LINES lines of MAX_LINE bytes and
        MAX_REPLY_BYTES in all, all of it within the socket's timeout (a server that
        drips a byte at a time fails like a silent one). Bytes that are not UTF-8 are
        kept as surrogates: nothing a server sends crashes the decoder."""
        assert self.sock is not None
        timeout = self.sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            first = self._bounded_line(deadline, timeout)
            lines = [first]
            size = len(first)
            if first[3:4] == "-":
                code = first[:3]
                while True:
                    line = self._bounded_line(deadline, timeout)
                    lines.append(line)
                    size += len(line)
                    if len(lines) > MAX_REPLY_LINES or size > MAX_REPLY_BYTES:
                        raise ftplib.error_proto(
                            f"a reply of over {MAX_REPLY_LINES} lines or {MAX_REPLY_BYTES} "
                            f"bytes, refused (it began: {first[:80]})"
                        )
                    if line[:3] == code and line[3:4] != "-":
                        break
        except (OSError, EOFError, ftplib.error_proto):
            self.broken = True  # out of step with the server: no more commands on it
            raise
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(timeout)
        reply = "\n".join(lines)
        self._record("reply", reply)
        return reply

    def _bounded_line(self, deadline: float | None, timeout: float | None) -> str:
        assert self.sock is not None
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise ftplib.error_proto(f"a reply line of over {MAX_LINE} bytes, refused")
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the reply did not end within {timeout:g}s")
                self.sock.settimeout(remaining)
            chunk = self.sock.recv(4096)
            if not chunk:
                if not self._buffer:
                    raise EOFError
                end = len(self._buffer)
                self._buffer += b"\n"
                break
            self._buffer += chunk
        raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        if len(raw) > MAX_LINE:
            raise ftplib.error_proto(f"a reply line of over {MAX_LINE} bytes, refused")
        return raw.rstrip(b"\r").decode("utf-8", "surrogateescape")

    def putcmd(self, line: str) -> None:
        shown = "PASS ****" if line[:5].upper() == "PASS " else line
        verb, _, argument = line.partition(" ")
        if verb.upper() in ("STOR", "APPE"):
            self.touched.add(argument)
        self._record("command", shown)
        self._data_target = None
        super().putcmd(line)  # type: ignore[misc]

    def _record(self, direction: str, text: str) -> None:
        line = Line(direction, text)
        self.dialogue.append(line)
        who = "client command" if direction == "command" else "server reply"
        self.log.debug(f"FTP {who}: {text}", direction=direction, code=line.code)

    def makepasv(self) -> tuple[str, int]:
        """EPSV or PASV as configured; the control connection's peer is always the host."""
        assert self.sock is not None
        peer = self.sock.getpeername()
        want_epsv = (
            self.af == socket.AF_INET6
            or self.dest.epsv is True
            or (self.dest.epsv == "auto" and not self.epsv_refused)
        )
        if want_epsv:
            try:
                reply = self.sendcmd("EPSV")  # type: ignore[attr-defined]
                host, port = _parsed(ftplib.parse229, reply, peer)  # type: ignore[attr-defined]
                return self._target(host, port)
            except ftplib.error_perm as exc:
                auto = self.dest.epsv == "auto" and self.af == socket.AF_INET
                if not auto or code_of(exc) not in replies.UNSUPPORTED:
                    raise
                self.epsv_refused = True
                self.log.info("FTP server refused EPSV; using PASV from now on")
        reply = self.sendcmd("PASV")  # type: ignore[attr-defined]
        advertised, port = _parsed(ftplib.parse227, reply)  # type: ignore[attr-defined]
        if advertised != peer[0]:
            kind = "a private or unroutable" if _unroutable(advertised) else "another"
            self.log.warning(
                f"FTP server's passive reply names {kind} address; using the control "
                "connection's address instead",
                advertised=advertised,
                control=peer[0],
            )
        return self._target(peer[0], port)

    def _target(self, host: str, port: int) -> tuple[str, int]:
        self._data_target = f"{host}:{port}"
        self.log.debug(f"FTP data connection: connecting to {self._data_target}")
        return host, port

    def makeport(self) -> socket.socket:
        """Listen for the server's data connection (in active_ports) and send PORT/EPRT."""
        assert self.sock is not None
        local = self.sock.getsockname()[0]
        ports = self.dest.active_port_range or range(0, 1)
        listener = None
        for port in ports:
            candidate = socket.socket(self.af, socket.SOCK_STREAM)
            try:
                candidate.bind(("", port))
            except OSError:
                candidate.close()
                continue
            listener = candidate
            break
        if listener is None:
            raise DataConnectionError(
                None, OSError(f"no free local port in active_ports {self.dest.active_ports}"), None
            )
        listener.listen(1)
        listener.settimeout(self.dest.connect_timeout)
        port = listener.getsockname()[1]
        advertised = self.dest.active_address or local
        self._listening = f"{advertised}:{port}"
        try:
            if ":" in advertised:
                self.sendeprt(advertised, port)  # type: ignore[attr-defined]
            else:
                self.sendport(advertised, port)  # type: ignore[attr-defined]
        except TimeoutError as exc:
            # some servers (pyftpdlib, IIS) connect before they answer PORT/EPRT
            pending = _pending(listener)
            listener.close()
            if pending:
                raise
            verb = "EPRT" if ":" in advertised else "PORT"
            raise self._no_connect_back(
                exc,
                f"the server neither connected to this host nor answered {verb} "
                f"within {self.dest.timeout:g}s",
            ) from exc
        except BaseException:
            listener.close()
            raise
        self.log.debug(f"FTP data connection: waiting for the server on {self._listening}")
        return listener

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, Any]:
        self.timeout = self.dest.connect_timeout  # ftplib opens data connections with it
        try:
            if self.passiveserver:
                conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # type: ignore[arg-type]
            else:
                conn, size = self._active_transfer(cmd, rest)
        except (ftplib.Error, EOFError, ssl.SSLError, FtpError):
            raise
        except OSError as exc:
            if not (self.passiveserver and self._data_target is not None):
                raise
            error = DataConnectionError(self._data_target, exc, self.timeout)
            self.log.warning(f"FTP {error}")
            raise error from exc
        finally:
            self.timeout = self.dest.timeout
        conn.settimeout(self.dest.timeout)  # from now on: how long it may stop moving
        return self._secure(conn), size

    def _active_transfer(self, cmd: str, rest: int | str | None) -> tuple[socket.socket, Any]:
        """PORT/EPRT, the command, then the server's connection to our listener.

        Servers differ in order: vsftpd and ProFTPD connect first and answer 150 after
        (or 425 once their own connect timeout, 60 s by default in vsftpd, runs out);
        others answer 150 first. Either way, a server that neither answers nor connects
        within `timeout` failed to reach this host: an active data-connection failure,
        whichever of the two timeouts ends first.
        """
        with self.makeport() as listener:
            if rest is not None:
                self.sendcmd(f"REST {rest}")  # type: ignore[attr-defined]
            self.putcmd(cmd)
            try:
                resp = self.getresp()  # type: ignore[attr-defined]
            except TimeoutError as exc:
                if _pending(listener):  # it did connect: the control connection is stuck
                    raise
                verb = cmd.split(" ", 1)[0]
                raise self._no_connect_back(
                    exc,
                    f"the server neither connected to this host nor answered {verb} "
                    f"within {self.dest.timeout:g}s",
                ) from exc
            code = code_of(resp) or 0
            if 200 <= code < 300:  # a reply before the preliminary one (as ftplib allows)
                resp = self.getresp()  # type: ignore[attr-defined]
                code = code_of(resp) or 0
            if not 100 <= code < 200:
                raise ftplib.error_reply(resp)
            try:
                conn, _ = listener.accept()
            except TimeoutError as exc:
                raise self._no_connect_back(
                    exc,
                    f"the server answered {resp[:3]} but did not connect within "
                    f"{self.dest.connect_timeout:g}s",
                ) from exc
        size = ftplib.parse150(resp) if code_of(resp) == Reply.OPENING_DATA else None  # type: ignore[attr-defined]
        return conn, size

    def _no_connect_back(self, cause: BaseException, reason: str) -> DataConnectionError:
        error = DataConnectionError(self._listening, cause, None, reason)
        self.log.warning(f"FTP {error}")
        return error

    def _secure(self, conn: socket.socket) -> socket.socket:
        return conn


class LoggingFTP(_DialogueMixin, ftplib.FTP):
    pass


class LoggingFTPS(_DialogueMixin, ftplib.FTP_TLS):
    def _secure(self, conn: socket.socket) -> socket.socket:
        """TLS on the data connection, resuming the control connection's session.

        Servers such as vsftpd with require_ssl_reuse=YES refuse a data connection
        that does not reuse it.
        """
        if not self._prot_p:  # type: ignore[attr-defined]
            return conn
        assert isinstance(self.sock, ssl.SSLSocket)
        secured = self.context.wrap_socket(  # type: ignore[attr-defined]
            conn, server_hostname=self.host, session=self.sock.session
        )
        self.log.debug(
            "FTP data connection: TLS", version=secured.version(), reused=secured.session_reused
        )
        return secured


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


CLIENTS: dict[str, Any] = {  # tls setting -> ftplib class with the dialogue hooks
    "none": LoggingFTP,
    "explicit": LoggingFTPS,
    "implicit": ImplicitFTPS,
}


def _parsed(parse: Callable[..., tuple[str, int]], reply: str, *args: Any) -> tuple[str, int]:
    """ftplib's parse227/parse229, with any malformed reply a protocol error."""
    try:
        host, port = parse(reply, *args)
        ipaddress.ip_address(host)
    except (ValueError, IndexError):
        raise ftplib.error_proto(f"an unreadable passive reply: {reply[:120]}") from None
    if not 0 < port < 65536:
        raise ftplib.error_proto(f"a passive reply with port {port}: {reply[:120]}")
    return host, port


def _pending(listener: socket.socket) -> bool:
    """A connection is waiting on the listener (the kernel accepted it for us)."""
    readable, _, _ = select.select([listener], [], [], 0)
    return bool(readable)


def _unroutable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return ip.is_private or ip.is_unspecified or ip.is_link_local or ip.is_reserved


def tls_context(dest: FtpDestination) -> ssl.SSLContext:
    """Verification against the system store (or tls_ca_file) unless pinned or disabled."""
    context = ssl.create_default_context(cafile=str(dest.tls_ca_file) if dest.tls_ca_file else None)
    if dest.tls_fingerprint or not dest.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin (checked after connecting) replaces it
    if dest.tls_max_version == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def certificate_fingerprint(sock: socket.socket) -> str | None:
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    return hashlib.sha256(der).hexdigest() if der else None


def describe_certificate(der: bytes) -> Certificate:
    """Subject, issuer, expiry and fingerprint of a DER certificate, trusted or not."""
    from cryptography import x509  # only when a certificate is shown

    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        cert = x509.load_der_x509_certificate(der)
        return Certificate(
            _printable(cert.subject.rfc4514_string()),
            _printable(cert.issuer.rfc4514_string()),
            cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
            fingerprint,
        )
    except ValueError:
        return Certificate("(unreadable)", "(unreadable)", "(unreadable)", fingerprint)


def _printable(text: str, limit: int = 300) -> str:
    """A server-chosen string made safe to print: no control characters, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
