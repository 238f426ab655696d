"""FTP/FTPS destination over ftplib, logging the whole dialogue.

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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import structlog

from backupagent import replies
from backupagent.config import FtpDestination
from backupagent.diagnosis import (
    NO_GREETING,
    Certificate,
    Failure,
    FailureKind,
    Line,
    ProbeResult,
    is_transient,
    mode_name,
)
from backupagent.replies import Reply, code_of

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
        self.reason = _describe_os_error(cause, timeout)
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
        self.reason = reason or _describe_os_error(cause, timeout)
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


def _is_file(source: BinaryIO) -> bool:
    """A real file, which sendfile(2) can send."""
    try:
        source.fileno()
    except (OSError, AttributeError, ValueError):
        return False
    return isinstance(source, io.BufferedReader)


def _read(source: BinaryIO) -> bytes:
    try:
        return source.read(BLOCK_SIZE)
    except OSError as exc:
        raise LocalReadError(f"reading {getattr(source, 'name', 'the upload')}: {exc}") from exc


# the peer closed the connection under us, as opposed to a stall (timeout)
_CLOSED_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED})

# everything an FTP operation may raise that means "the transfer failed"
TRANSFER_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ftplib.Error, FtpError)


def _describe_os_error(exc: BaseException, timeout: float | None = None) -> str:
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


_CLIENTS: dict[str, Any] = {  # tls setting -> ftplib class with the dialogue hooks
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


class FtpSession:
    """One logged-in FTP connection in one data-connection mode."""

    def __init__(
        self, dest: FtpDestination, passive: bool, touched: set[str] | None = None
    ) -> None:
        self.dest = dest
        self.passive = passive
        self.dialogue: list[Line] = []
        # names the server may now hold because of us: an upload begun, a rename
        self.touched: set[str] = set() if touched is None else touched
        # data transfers the server took on (its 1xx came): it works, whatever then broke
        self.transfers = 0
        self.certificate: Certificate | None = None  # when TLS verification failed
        self._data_conn: socket.socket | None = None
        self._features: set[str] | None = None
        self.log = structlog.get_logger("backupagent.ftp").bind(mode=mode_name(passive))
        kwargs: dict[str, Any] = {"timeout": dest.connect_timeout}
        if dest.tls != "none":
            kwargs["context"] = tls_context(dest)
        self.ftp: ftplib.FTP = _CLIENTS[dest.tls](
            self.log, self.dialogue, dest, self.touched, **kwargs
        )

    def open(self) -> FtpSession:
        """Connect (within connect_timeout), check TLS, log in, set the mode."""
        address = f"{self.dest.host}:{self.dest.effective_port}"
        self.log.debug(f"FTP connecting to {address}", tls=self.dest.tls)
        try:
            self.ftp.connect(self.dest.host, self.dest.effective_port, self.dest.connect_timeout)
        except ssl.SSLCertVerificationError:
            self.certificate = self._unverified_certificate()
            raise
        except ssl.SSLError:
            raise
        except OSError as exc:
            connected = self.ftp.sock is not None  # ftplib sets it once TCP is up
            raise ControlConnectError(address, exc, self.dest.connect_timeout, connected) from exc
        assert self.ftp.sock is not None
        self.ftp.sock.settimeout(self.dest.timeout)
        self.ftp.timeout = self.dest.timeout
        _keepalive(self.ftp.sock)
        if isinstance(self.ftp, ftplib.FTP_TLS):
            if not isinstance(self.ftp.sock, ssl.SSLSocket):
                try:
                    self.ftp.auth()
                except ssl.SSLCertVerificationError:
                    self.certificate = self._unverified_certificate()
                    raise
            self._check_certificate()
        self.ftp.login(self.dest.user, self.dest.read_password() or "")
        if isinstance(self.ftp, ftplib.FTP_TLS):
            self.ftp.prot_p()
        self.ftp.set_pasv(self.passive)
        return self

    def _unverified_certificate(self) -> Certificate | None:
        """The certificate that failed verification, fetched on a second connection
        that only shakes hands (no login: the password never crosses it)."""
        context = tls_context(self.dest.model_copy(update={"tls_verify": False}))
        try:
            with socket.create_connection(
                (self.dest.host, self.dest.effective_port), self.dest.connect_timeout
            ) as raw:
                raw.settimeout(self.dest.timeout)
                if self.dest.tls == "explicit":
                    reader = raw.makefile("rb")
                    _read_reply(reader)  # the greeting
                    raw.sendall(b"AUTH TLS\r\n")
                    if code_of(_read_reply(reader)) != Reply.TLS_GO_AHEAD:
                        return None
                with context.wrap_socket(raw, server_hostname=self.dest.host) as tls:
                    der = tls.getpeercert(binary_form=True)
        except (OSError, ValueError):
            return None
        return describe_certificate(der) if der else None

    def certificate_info(self) -> Certificate | None:
        """The control connection's certificate (verified, pinned or not checked)."""
        sock = self.ftp.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        return describe_certificate(der) if der else None

    def _check_certificate(self) -> None:
        """Pinning and the loud warning for tls_verify = false."""
        assert self.ftp.sock is not None
        if self.dest.tls_fingerprint:
            seen = certificate_fingerprint(self.ftp.sock)
            if seen != self.dest.tls_fingerprint:
                self.certificate = self.certificate_info()
                raise ssl.SSLError(
                    f"certificate fingerprint mismatch: the server presented SHA-256 {seen}, "
                    f"tls_fingerprint expects {self.dest.tls_fingerprint}"
                )
        elif not self.dest.tls_verify:
            self.log.warning(
                "TLS CERTIFICATE NOT VERIFIED (tls_verify = false): anyone between this host "
                "and the server can read the password and the backups; set tls_ca_file or "
                "tls_fingerprint instead"
            )

    def tls_info(self) -> dict[str, Any]:
        """Protocol, certificate subject, expiry and fingerprint of the control connection."""
        sock = self.ftp.sock
        if not isinstance(sock, ssl.SSLSocket):
            return {}
        info: dict[str, Any] = {"protocol": sock.version(), "cipher": (sock.cipher() or ("",))[0]}
        certificate = self.certificate_info()
        if certificate is not None:
            info["subject"] = certificate.subject
            info["issuer"] = certificate.issuer
            info["expires"] = certificate.not_after
            info["fingerprint_sha256"] = certificate.fingerprint
        return info

    def close(self) -> None:
        """QUIT politely when the connection is in order, waiting briefly; else (a
        reply timed out or broke: the server may be busy for a minute, as vsftpd is
        while it connects back) just drop it."""
        try:
            if self.ftp.sock is not None and not getattr(self.ftp, "broken", False):
                self.ftp.sock.settimeout(min(self.dest.timeout, QUIT_WAIT))
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

    def features(self) -> set[str]:
        """The FEAT lines, upper-cased (empty if the server has no FEAT)."""
        if self._features is None:
            try:
                reply = self.ftp.sendcmd("FEAT")
            except ftplib.error_perm:
                reply = ""
            lines = reply.splitlines()[1:-1]
            self._features = {line.strip().upper() for line in lines if line.strip()}
        return self._features

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
        self,
        source: BinaryIO,
        name: str,
        progress: Callable[[int], None] | None = None,
        *,
        offset: int = 0,
        append: bool = False,
    ) -> int:
        """Send `source` (already at `offset`) as `name`: STOR, REST+STOR, or APPE."""
        self.ftp.voidcmd("TYPE I")
        if append:
            conn, _ = self.ftp.ntransfercmd(f"APPE {name}")
        else:
            conn, _ = self.ftp.ntransfercmd(f"STOR {name}", offset or None)
        self.transfers += 1
        self._data_conn = conn
        try:
            with conn:
                sent = self._send(conn, source, offset, progress)
                if isinstance(conn, ssl.SSLSocket):
                    try:
                        conn.unwrap()  # bounded by the data timeout
                    except OSError as exc:
                        raise DataTransferError(f"TLS shutdown: {exc}") from exc
        except DataTransferError as exc:
            if exc.closed:
                self._reason_for_close()
            raise
        finally:
            self._data_conn = None
        # the server may still be writing what sat in the buffers: give 226 longer
        control = self.ftp.sock
        assert control is not None
        control.settimeout(self.dest.final_reply_timeout)
        try:
            self.ftp.voidresp()
        finally:
            control.settimeout(self.dest.timeout)
        return sent

    def _reason_for_close(self) -> None:
        """The server closed the data connection mid-upload: read the reply that says
        why (vsftpd: `451 Failure writing to local file.`), raising it as the error."""
        control = self.ftp.sock
        if control is None:
            return
        control.settimeout(min(self.dest.timeout, 10.0))
        try:
            self.ftp.getresp()  # type: ignore[attr-defined]  # raises on 4xx/5xx
        except (OSError, EOFError):
            pass  # no reply: the broken transfer is all we know
        finally:
            with contextlib.suppress(OSError):
                control.settimeout(self.dest.timeout)

    def _send(
        self,
        conn: socket.socket,
        source: BinaryIO,
        offset: int,
        progress: Callable[[int], None] | None,
    ) -> int:
        """`source` to its end over `conn`: a local file on a plain connection through
        sendfile(2), so the kernel copies it and not Python; anything else in blocks."""
        kernel = _is_file(source) and not isinstance(conn, ssl.SSLSocket)
        position = source.tell() if kernel else 0
        sent = 0
        while True:
            try:
                if kernel:
                    n = conn.sendfile(source, position + sent, SENDFILE_CHUNK)
                else:
                    block = _read(source)  # LocalReadError is not a network error
                    conn.sendall(block)
                    n = len(block)
            except OSError as exc:
                reason = _describe_os_error(exc, self.dest.timeout)
                raise DataTransferError(
                    f"after {offset + sent} bytes: {reason}", exc.errno in _CLOSED_ERRNOS
                ) from exc
            if n == 0:
                return sent
            sent += n
            if progress:
                progress(n)

    def interrupt(self) -> None:
        """From another thread: break off whatever this session is waiting for."""
        for sock in (self._data_conn, self.ftp.sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def upload_bytes(self, data: bytes, name: str) -> None:
        self.upload(io.BytesIO(data), name)

    def download(self, name: str, sink: Callable[[bytes], object], offset: int = 0) -> None:
        """RETR in binary mode, from `offset` (REST) to continue a broken download."""

        def counted(block: bytes) -> None:
            if not started:
                started.append(True)
                self.transfers += 1
            sink(block)

        started: list[bool] = []
        self.ftp.retrbinary(f"RETR {name}", counted, blocksize=BLOCK_SIZE, rest=offset or None)

    def rename(self, old: str, new: str) -> None:
        self.ftp.rename(old, new)
        self.touched.add(new)

    def size(self, name: str) -> int | None:
        self.ftp.voidcmd("TYPE I")
        reply = self.ftp.sendcmd(f"SIZE {name}")
        if code_of(reply) != Reply.FILE_STATUS:
            return None
        text = reply[4:].strip()
        if not text.isdigit() or len(text) > 20:
            raise ftplib.error_proto(f"an unreadable SIZE reply: {reply[:120]}")
        return int(text)

    def size_or_none(self, name: str) -> int | None:
        """SIZE of a file that may not exist (550 -> None)."""
        try:
            return self.size(name)
        except ftplib.error_perm as exc:
            if replies.is_oops(str(exc)):  # the session died: not an answer about the file
                raise
            return None

    def remote_hash(self, name: str) -> tuple[str, str] | None:
        """(algorithm, hex digest) the server computes for `name`, if FEAT offers a way."""
        features = self.features()
        hash_feature = next((f for f in features if f.startswith("HASH ")), None)
        if hash_feature and "SHA-256" in hash_feature:
            if "SHA-256*" not in hash_feature:
                self.ftp.sendcmd("OPTS HASH SHA-256")
            reply = self.ftp.sendcmd(f"HASH {name}")  # 213 SHA-256 0-N <hex> <name>
            return "sha256", _word(reply, 3)
        for command, algorithm in (("XSHA256", "sha256"), ("XMD5", "md5")):
            if command in features:
                reply = self.ftp.sendcmd(f"{command} {name}")  # 213 <hex>
                return algorithm, _word(reply, 1)
        return None

    def delete(self, name: str) -> None:
        self.ftp.delete(name)

    def delete_all(self, names: list[str]) -> None:
        """DELE each name in order; 550 (already gone, or never created) is fine."""
        for name in names:
            try:
                self.ftp.delete(name)
            except ftplib.error_perm as exc:
                if replies.is_oops(str(exc)):  # the session died, nothing was answered
                    raise

    def names(self) -> list[str]:
        """Plain file names in the current directory (NLST); a name that is not UTF-8
        is kept (as surrogates) and sent back as the same bytes."""
        try:
            lines = self._text_lines("NLST")
        except (ftplib.error_perm, ftplib.error_temp) as exc:
            # some servers answer an empty directory with 550/450 "No files found"
            if code_of(exc) in replies.NOT_FOUND:
                return []
            raise
        return [n.rsplit("/", 1)[-1] for n in lines if n]

    def listing(self) -> list[str]:
        """A LIST of the current directory: the tiny transfer used to probe a mode."""
        return self._text_lines("LIST")

    def _text_lines(self, command: str) -> list[str]:
        """A listing's lines, bounded by MAX_LISTING_BYTES, decoded without failing."""
        received = bytearray()

        def keep(block: bytes) -> None:
            if len(received) + len(block) > MAX_LISTING_BYTES:
                raise ftplib.error_proto(
                    f"a {command} listing of over {MAX_LISTING_BYTES} bytes, refused"
                )
            received.extend(block)

        self.ftp.retrbinary(command, keep, blocksize=BLOCK_SIZE)
        text = bytes(received).decode("utf-8", "surrogateescape")
        return [line.rstrip("\r") for line in text.split("\n") if line.strip("\r")]

    def failure(self, exc: BaseException) -> Failure:
        """Describe an exception raised by this session as plain data for diagnosis."""
        dialogue = tuple(self.dialogue)
        kind, error, address = _classify_exception(exc, self.dest.timeout)
        stored, size = (exc.stored, exc.size) if isinstance(exc, NoProgress) else (None, None)
        return Failure(
            kind,
            self.passive,
            dialogue,
            error,
            address,
            stored=stored,
            size=size,
            certificate=self.certificate if kind is FailureKind.TLS else None,
            closed_by_server=isinstance(exc, DataTransferError) and exc.closed,
        )


def _word(reply: str, index: int) -> str:
    """The `index`th word of a reply, lower-cased; a protocol error if it is missing."""
    words = reply.split()
    if len(words) <= index:
        raise ftplib.error_proto(f"an unreadable reply: {reply[:120]}")
    return words[index].lower()


def _read_reply(reader: Any, limit: int = 64) -> str:
    """One (possibly multi-line) reply read from a raw socket file, bounded."""
    first = reader.readline(1024).decode("latin-1")
    lines = [first]
    if first[3:4] == "-":
        while len(lines) < limit:
            line = reader.readline(1024).decode("latin-1")
            lines.append(line)
            if not line or (line[:3] == first[:3] and line[3:4] == " "):
                break
    return lines[-1]


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive on the control connection, so NAT boxes keep it during long uploads."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 20)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)


T = TypeVar("T")


# Until a data transfer has begun, a transient failure is retried this many times only:
# a server that is down, unreachable or refusing us at the start fails the run in
# seconds rather than minutes; once data moves, a restart mid-upload is ridden out.
UNTRIED_RETRIES = 1


class FtpRemote:
    """The destination directory, reached through sessions that are reopened after
    transient failures: each operation is retried with exponential backoff, at most
    `retries` times and within `retry_time` seconds, and every attempt is logged.
    Until a transfer has begun on one of its sessions, at most UNTRIED_RETRIES retries."""

    def __init__(
        self, dest: FtpDestination, passive: bool, cancel: threading.Event | None = None
    ) -> None:
        self.dest = dest
        self.passive = passive
        self.cancel = cancel or threading.Event()
        self.session: FtpSession | None = None
        self.last_failure: Failure | None = None
        self.touched: set[str] = set()  # names the server may hold because of this remote
        self.transfers = 0  # transfers begun on closed sessions
        self.log = structlog.get_logger("backupagent.ftp").bind(mode=mode_name(passive))

    @property
    def progressed(self) -> bool:
        """A transfer has begun: the server was reachable and working during this run."""
        return self.transfers + (self.session.transfers if self.session else 0) > 0

    def _connected(self) -> FtpSession:
        if self.session is None:
            # created before open, so that failure() can describe a failed open
            self.session = FtpSession(self.dest, self.passive, self.touched)
            self.session.open()
            self.session.change_directory(self.dest.directory)
        return self.session

    def close(self) -> None:
        if self.session is not None:
            self.transfers += self.session.transfers
            self.session.close()
            self.session = None

    def check(self) -> None:
        """Log in and reach the directory (creating it), then disconnect: a wrong
        password or a missing directory shows before any work is done."""
        self.call("login", lambda _session, _attempt: None)
        self.close()

    def interrupt(self) -> None:
        """From another thread: break off the current operation."""
        if self.session is not None:
            self.session.interrupt()

    def call(self, what: str, op: Callable[[FtpSession, int], T]) -> T:
        """Run `op(session, attempt)`, retrying transient failures on a fresh session.

        On giving up, the last exception propagates and `last_failure` describes it.
        """
        delay = self.dest.retry_wait
        deadline = time.monotonic() + self.dest.retry_time
        attempt = 0
        while True:
            try:
                return op(self._connected(), attempt)
            except TRANSFER_ERRORS as exc:
                assert self.session is not None
                failure = self.session.failure(exc)
                self.last_failure = failure
                self.close()  # a fresh connection for whatever comes next
                retries = self.dest.retries
                if not self.progressed:
                    retries = min(retries, UNTRIED_RETRIES)
                if (
                    self.cancel.is_set()
                    or not is_transient(failure)
                    or attempt >= retries
                    or time.monotonic() + delay > deadline
                ):
                    raise
                attempt += 1
                self.log.warning(
                    f"FTP {what} failed; retrying",
                    attempt=attempt,
                    retries=self.dest.retries,
                    wait_seconds=delay,
                    reason=failure.error or (failure.dialogue[-1].text if failure.dialogue else ""),
                )
                if self.cancel.wait(delay):
                    raise
                delay = min(delay * 2, 60.0)

    def upload_file(
        self, path: Path, name: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """Upload a local file; after an interruption, continue from the size on the server.

        When the server stops taking data (a full disk: 451/452/552 or a data
        connection it closes), one more attempt tells: if the size it holds has not
        grown by the next retry, NoProgress ends the upload instead of more retries.
        A server that refuses to resume (ProFTPD without AllowStoreRestart) gets the
        whole file again.
        """
        total = path.stat().st_size
        held_before: int | None = None  # SIZE at the last retry that followed a stop
        from_start = self.dest.resume == "off"

        def send(session: FtpSession, attempt: int) -> None:
            nonlocal held_before, from_start
            previous = self.last_failure if attempt else None
            stopped = previous is not None and _stopped_taking_data(previous)
            offset = 0
            if previous is not None and (stopped or not from_start):
                held = min(session.size_or_none(name) or 0, total)
                if stopped:
                    assert previous is not None
                    if held_before is not None and held <= held_before:
                        raise NoProgress(name, held, total, _last_words(previous))
                    held_before = held
                offset = 0 if from_start else held
            append = False
            if offset:
                method = self.dest.resume
                if method == "auto":
                    method = "rest" if "REST STREAM" in session.features() else "appe"
                append = method == "appe"
                self.log.info(
                    "resuming upload",
                    name=name,
                    offset=offset,
                    of=total,
                    method="APPE" if append else "REST + STOR",
                )
            try:
                with path.open("rb") as source:
                    source.seek(offset)
                    session.upload(source, name, progress, offset=offset, append=append)
            except ftplib.Error as exc:
                if offset and not _began_transfer(session.dialogue):
                    from_start = True
                    self.log.warning(
                        "the server refused to resume the upload; the next attempt sends "
                        "it from the start",
                        name=name,
                        reply=str(exc),
                    )
                raise

        self.call(f"upload of {name}", send)

    def rename(self, old: str, new: str) -> None:
        """RNFR/RNTO, safe to repeat: after a lost connection, a retry first checks
        whether the rename already happened (the target there, the source gone)."""

        def move(session: FtpSession, attempt: int) -> None:
            done = attempt and session.size_or_none(new) is not None
            if done and session.size_or_none(old) is None:
                self.log.info("rename already done before the connection was lost", name=new)
                session.touched.add(new)
                return
            session.rename(old, new)

        self.call("rename", move)

    def delete(self, names: list[str]) -> None:
        """DELE each name; one already gone (a retry, or never created) is fine."""
        self.call("delete", lambda session, _attempt: session.delete_all(names))


def _began_transfer(dialogue: list[Line] | tuple[Line, ...]) -> bool:
    """The last upload command got its 1xx: the server took the transfer on."""
    for line in reversed(dialogue):
        if line.direction == "command" and line.verb in ("STOR", "APPE"):
            return False
        if line.code is not None and 100 <= line.code < 200:
            return True
    return False


def _stopped_taking_data(failure: Failure) -> bool:
    """During an upload it had begun, the server refused more data (storage replies)
    or closed the data connection."""
    if failure.kind is FailureKind.REPLY:
        last = failure.dialogue[-1] if failure.dialogue else None
        return (
            last is not None and last.code in replies.STORAGE and _began_transfer(failure.dialogue)
        )
    return failure.kind is FailureKind.DATA_TRANSFER and failure.closed_by_server


def _last_words(failure: Failure) -> str:
    last = failure.dialogue[-1] if failure.dialogue else None
    if last is not None and last.direction == "reply":
        return last.text
    return failure.error


def _classify_exception(exc: BaseException, timeout: float) -> tuple[FailureKind, str, str | None]:
    """(kind, error text, unreachable address) of an exception from an FTP session."""
    match exc:
        case ControlConnectError():
            return FailureKind.CONTROL_CONNECT, exc.reason, exc.address
        case DataConnectionError():
            return FailureKind.DATA_CONNECT, exc.reason, exc.address
        case NoProgress():
            return FailureKind.NO_PROGRESS, str(exc), None
        case DataTransferError():
            return FailureKind.DATA_TRANSFER, str(exc), None
        case ssl.SSLError() | ssl.CertificateError():
            return FailureKind.TLS, str(exc), None
        case ftplib.error_proto():
            return FailureKind.PROTOCOL, str(exc), None
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
