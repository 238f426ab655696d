"""One logged-in FTP connection in one mode: login, TLS checks, upload, download, listings."""

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
from backupagent.destinations.ftp import replies
from backupagent.destinations.ftp.diagnosis import (
    Certificate,
    Failure,
    FailureKind,
    Line,
)
from backupagent.destinations.ftp.dialogue import (
    BLOCK_SIZE,
    CLIENTS,
    CLOSED_ERRNOS,
    MAX_LISTING_BYTES,
    QUIT_WAIT,
    SENDFILE_CHUNK,
    ControlConnectError,
    DataConnectionError,
    DataTransferError,
    NoProgress,
    certificate_fingerprint,
    describe_certificate,
    describe_os_error,
    is_file,
    read_block,
    tls_context,
)
from backupagent.destinations.ftp.replies import Reply, code_of
from backupagent.diagnosis.common import mode_name


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
        self.ftp: ftplib.FTP = CLIENTS[dest.tls](
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
        kernel = is_file(source) and not isinstance(conn, ssl.SSLSocket)
        position = source.tell() if kernel else 0
        sent = 0
        while True:
            try:
                if kernel:
                    n = conn.sendfile(source, position + sent, SENDFILE_CHUNK)
                else:
                    block = read_block(source)  # LocalReadError is not a network error
                    conn.sendall(block)
                    n = len(block)
            except OSError as exc:
                reason = describe_os_error(exc, self.dest.timeout)
                raise DataTransferError(
                    f"after {offset + sent} bytes: {reason}", exc.errno in CLOSED_ERRNOS
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
            return FailureKind.CONTROL_LOST, describe_os_error(exc, timeout) or "closed", None
    return FailureKind.OTHER, f"{type(exc).__name__}: {exc}", None


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
