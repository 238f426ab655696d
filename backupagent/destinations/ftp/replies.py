"""FTP reply codes by name (RFC 959, 2228, 2428, 3659), and the one way to read them."""

from __future__ import annotations

from enum import IntEnum


class Reply(IntEnum):
    """The reply codes the agent acts on."""

    ALREADY_OPEN = 125  # data connection already open; transfer starting
    OPENING_DATA = 150  # about to open the data connection
    OK = 200
    FILE_STATUS = 213  # SIZE, XSHA256, HASH
    READY = 220
    TLS_GO_AHEAD = 234  # AUTH TLS accepted
    TRANSFER_COMPLETE = 226
    PASSIVE = 227
    EXTENDED_PASSIVE = 229
    LOGGED_IN = 230
    SERVICE_UNAVAILABLE = 421  # the server is closing the control connection
    CANT_OPEN_DATA = 425
    TRANSFER_ABORTED = 426
    FILE_BUSY = 450
    LOCAL_ERROR = 451  # vsftpd: "Failure writing to local file." on a full disk
    INSUFFICIENT_STORAGE = 452
    SYNTAX_ERROR = 500  # also vsftpd's "500 OOPS: ..." when its session process died
    BAD_ARGUMENTS = 501
    NOT_IMPLEMENTED = 502
    NOT_IMPLEMENTED_FOR_PARAMETER = 504
    PROTOCOL_NOT_SUPPORTED = 522  # EPRT/EPSV network protocol; some servers: TLS required
    NOT_LOGGED_IN = 530
    TLS_REFUSED = 534
    FILE_UNAVAILABLE = 550  # no such file, or no permission
    STORAGE_EXCEEDED = 552
    NAME_NOT_ALLOWED = 553


# the server does not know the command at all
UNSUPPORTED = frozenset({Reply.SYNTAX_ERROR, Reply.NOT_IMPLEMENTED})
UNSUPPORTED_HERE = UNSUPPORTED | {Reply.NOT_IMPLEMENTED_FOR_PARAMETER}
# the server or its disk said "not now": worth another attempt
TRANSIENT = frozenset(
    {Reply.SERVICE_UNAVAILABLE, Reply.TRANSFER_ABORTED, Reply.FILE_BUSY, Reply.LOCAL_ERROR}
)
# what servers answer when they stop accepting an upload's data (426: pyftpdlib and
# others report a failed write as an aborted transfer)
STORAGE = frozenset(
    {
        Reply.TRANSFER_ABORTED,
        Reply.LOCAL_ERROR,
        Reply.INSUFFICIENT_STORAGE,
        Reply.STORAGE_EXCEEDED,
    }
)
TLS_FAILURES = frozenset({Reply.PROTOCOL_NOT_SUPPORTED, Reply.TLS_REFUSED})
# "no such file" (and "No files found" for an empty NLST on some servers)
NOT_FOUND = frozenset({Reply.FILE_UNAVAILABLE, Reply.FILE_BUSY})

OOPS = "OOPS:"  # vsftpd's marker for an error in its own session process


def code_of(reply: object) -> int | None:
    """The three-digit code at the start of a reply (or of an ftplib error carrying one)."""
    head = str(reply)[:3]
    return int(head) if len(head) == 3 and head.isdigit() else None


def is_oops(reply: str) -> bool:
    """vsftpd's `500 OOPS: ...`: its session died or it refuses its own configuration."""
    return reply[4:].lstrip().startswith(OOPS)
