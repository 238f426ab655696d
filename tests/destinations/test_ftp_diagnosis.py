"""The pure diagnosis: what a failed dialogue means and what the user is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupagent.destinations.ftp.diagnosis import (
    FTP_RULES,
    Certificate,
    Failure,
    FailureKind,
    Line,
    diagnose,
    is_transient,
    matching_rule,
)
from backupagent.diagnosis import Category, ProbeResult, suggestion_text

CERT = Certificate("CN=ftp.example.com", "CN=Example CA", "2027-01-01 00:00:00 UTC", "ab" * 32)

LOGIN = (
    Line("reply", "220 ready"),
    Line("command", "USER backup"),
    Line("reply", "331 Password required"),
    Line("command", "PASS ****"),
)
LOGGED_IN = (
    *LOGIN,
    Line("reply", "230 Login successful."),
    Line("command", "TYPE I"),
    Line("reply", "200 Type set to: Binary."),
)


def c(text: str) -> Line:
    return Line("command", text)


def r(text: str) -> Line:
    return Line("reply", text)


CASES = [
    # (name, failure, category, passive value suggested or None)
    (
        "pasv connect timeout",
        Failure(
            FailureKind.DATA_CONNECT,
            True,
            (*LOGGED_IN, c("PASV"), r("227 Entering Passive Mode (10,0,0,2,156,64).")),
            "timed out after 5s",
            "10.0.0.2:40000",
        ),
        Category.PASSIVE_DATA,
        False,
    ),
    (
        "pasv connect refused",
        Failure(
            FailureKind.DATA_CONNECT,
            True,
            (*LOGGED_IN, c("EPSV"), r("229 Entering Extended Passive Mode (|||40001|)")),
            "connection refused",
            "10.0.0.2:40001",
        ),
        Category.PASSIVE_DATA,
        False,
    ),
    (
        "425 after pasv",
        Failure(
            FailureKind.REPLY,
            True,
            (
                *LOGGED_IN,
                c("PASV"),
                r("227 Entering Passive Mode (10,0,0,2,156,64)."),
                c("STOR a.partial"),
                r("425 Security: Bad IP connecting."),
            ),
            "425",
        ),
        Category.PASSIVE_DATA,
        False,
    ),
    (
        "425 after accepted PORT",
        Failure(
            FailureKind.REPLY,
            False,
            (
                *LOGGED_IN,
                c("PORT 10,0,0,1,200,10"),
                r("200 PORT command successful."),
                c("STOR a.partial"),
                r("425 Failed to establish connection."),
            ),
            "425",
        ),
        Category.ACTIVE_DATA,
        True,
    ),
    (
        "active accept timeout",
        Failure(
            FailureKind.DATA_CONNECT,
            False,
            (
                *LOGGED_IN,
                c("EPRT |1|10.0.0.1|5000|"),
                r("200 EPRT ok"),
                c("STOR a"),
                r("150 Ok to send data."),
            ),
            "timed out after 5s",
        ),
        Category.ACTIVE_DATA,
        True,
    ),
    (
        "PORT refused 500",
        Failure(
            FailureKind.REPLY,
            False,
            (*LOGGED_IN, c("PORT 10,0,0,1,200,10"), r("500 Illegal PORT command.")),
            "500",
        ),
        Category.ACTIVE_DATA,
        True,
    ),
    (
        "EPRT refused 501",
        Failure(
            FailureKind.REPLY,
            False,
            (*LOGGED_IN, c("EPRT |1|10.0.0.1|5000|"), r("501 Rejected data connection")),
            "501",
        ),
        Category.ACTIVE_DATA,
        True,
    ),
    (
        "PASV not implemented",
        Failure(
            FailureKind.REPLY,
            True,
            (*LOGGED_IN, c("PASV"), r("502 Command not implemented.")),
            "502",
        ),
        Category.PASSIVE_UNSUPPORTED,
        False,
    ),
    (
        "EPSV unknown 500",
        Failure(FailureKind.REPLY, True, (*LOGGED_IN, c("EPSV"), r("500 Unknown command.")), "500"),
        Category.PASSIVE_UNSUPPORTED,
        False,
    ),
    (
        "vsftpd wants TLS",
        Failure(
            FailureKind.REPLY,
            True,
            (
                r("220 ready"),
                c("USER backup"),
                r("530 Non-anonymous sessions must use encryption."),
            ),
        ),
        Category.TLS,
        None,
    ),
    (
        "ProFTPD wants TLS",
        Failure(
            FailureKind.REPLY,
            True,
            (r("220 ready"), c("USER backup"), r("550 SSL/TLS required on the control channel")),
        ),
        Category.TLS,
        None,
    ),
    (
        "Pure-FTPd wants TLS",
        Failure(
            FailureKind.REPLY,
            True,
            (
                r("220 ready"),
                c("USER backup"),
                r(
                    "421 Sorry, cleartext sessions and weak ciphers are not accepted on this server."
                ),
            ),
        ),
        Category.TLS,
        None,
    ),
    (
        "wrong password",
        Failure(FailureKind.REPLY, True, (*LOGIN, r("530 Login incorrect.")), "530"),
        Category.LOGIN,
        None,
    ),
    (
        "550 on STOR in passive",
        Failure(
            FailureKind.REPLY,
            True,
            (
                *LOGGED_IN,
                c("PASV"),
                r("227 Entering Passive Mode (10,0,0,2,156,64)."),
                c("STOR a"),
                r("550 Permission denied."),
            ),
            "550",
        ),
        Category.PATH,
        None,
    ),
    (
        "553 file name",
        Failure(
            FailureKind.REPLY,
            False,
            (*LOGGED_IN, c("STOR a"), r("553 Could not create file.")),
            "553",
        ),
        Category.PATH,
        None,
    ),
    (
        "552 quota",
        Failure(FailureKind.REPLY, True, (*LOGGED_IN, c("STOR a"), r("552 Quota exceeded")), "552"),
        Category.NO_SPACE,
        None,
    ),
    (
        "452 disk full",
        Failure(
            FailureKind.REPLY,
            True,
            (*LOGGED_IN, c("STOR a"), r("452 Insufficient storage space")),
            "452",
        ),
        Category.NO_SPACE,
        None,
    ),
    (
        "control refused",
        Failure(FailureKind.CONTROL_CONNECT, True, (), "connection refused", "ftp.example.com:21"),
        Category.HOST,
        None,
    ),
    (
        "accepted but no greeting",
        Failure(
            FailureKind.CONTROL_CONNECT,
            True,
            (),
            "connected, but the server sent no greeting within 15s",
            "ftp.example.com:990",
        ),
        Category.HOST,
        None,
    ),
    (
        "dns failure",
        Failure(
            FailureKind.CONTROL_CONNECT,
            False,
            (),
            "name lookup failed (Name or service not known)",
            "nohost:21",
        ),
        Category.HOST,
        None,
    ),
    (
        "522 tls required on data",
        Failure(
            FailureKind.REPLY,
            True,
            (
                *LOGGED_IN,
                c("PASV"),
                r("227 Entering Passive Mode (10,0,0,2,156,64)."),
                c("STOR a"),
                r("522 SSL connection required on data channel"),
            ),
            "522",
        ),
        Category.TLS,
        None,
    ),
    (
        "534 policy",
        Failure(
            FailureKind.REPLY,
            True,
            (r("220 ready"), c("AUTH TLS"), r("534 Policy requires SSL.")),
            "534",
        ),
        Category.TLS,
        None,
    ),
    (
        "530 asking for TLS is not a password problem",
        Failure(
            FailureKind.REPLY,
            True,
            (r("220 ready"), c("AUTH TLS"), r("530 Please login with USER and PASS.")),
            "530",
        ),
        Category.TLS,
        None,
    ),
    (
        "stall mid-transfer",
        Failure(
            FailureKind.DATA_TRANSFER,
            True,
            (
                *LOGGED_IN,
                c("PASV"),
                r("227 Entering Passive Mode (10,0,0,2,156,64)."),
                c("STOR a"),
                r("150 ok"),
            ),
            "after 1048576 bytes: timed out",
        ),
        Category.DATA_BROKEN,
        None,
    ),
    (
        "control lost",
        Failure(
            FailureKind.CONTROL_LOST, True, (*LOGGED_IN, c("NOOP")), "connection reset by peer"
        ),
        Category.CONTROL_LOST,
        None,
    ),
    (
        "active: neither a reply nor a connection within timeout",
        Failure(
            FailureKind.DATA_CONNECT,
            False,
            (*LOGGED_IN, c("PORT 10,0,0,1,156,64"), r("200 PORT ok"), c("STOR a.partial")),
            "the server neither connected to this host nor answered STOR within 30s",
            "10.0.0.1:40000",
        ),
        Category.ACTIVE_DATA,
        True,
    ),
    (
        "certificate not verified",
        Failure(
            FailureKind.TLS,
            True,
            (r("220 ready"), c("AUTH TLS"), r("234 Proceed")),
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate",
            certificate=CERT,
        ),
        Category.TLS,
        None,
    ),
    (
        "vsftpd OOPS at login",
        Failure(
            FailureKind.REPLY,
            True,
            (*LOGIN, r("500 OOPS: vsftpd: refusing to run with writable root inside chroot()")),
        ),
        Category.SERVER_ERROR,
        None,
    ),
    (
        "upload stopped at the same size twice",
        Failure(
            FailureKind.NO_PROGRESS,
            True,
            (*LOGGED_IN, c("SIZE a.partial"), r("213 1048576")),
            "the upload of a.partial stopped again at byte 1048576 of 2000000; the attempt "
            "before ended with: 451 Failure writing to local file.",
            stored=1048576,
            size=2000000,
        ),
        Category.NO_SPACE,
        None,
    ),
    (
        "unparsable EPSV reply",
        Failure(
            FailureKind.PROTOCOL,
            True,
            (*LOGGED_IN, c("EPSV"), r("229 Entering Extended Passive Mode (|||abc|)")),
            "an unreadable passive reply: 229 Entering Extended Passive Mode (|||abc|)",
        ),
        Category.PROTOCOL,
        None,
    ),
    (
        "anything else",
        Failure(FailureKind.OTHER, True, LOGGED_IN, "ValueError: odd"),
        Category.UNKNOWN,
        None,
    ),
]


def _case(name: str) -> Failure:
    return next(case[1] for case in CASES if case[0] == name)


def test_every_rule_has_a_row() -> None:
    assert {matching_rule(case[1]).name for case in CASES} == {rule.name for rule in FTP_RULES}


def test_storage_verdict_quotes_the_counts_and_the_reply() -> None:
    diagnosis = diagnose(next(case[1] for case in CASES if case[0].startswith("upload stopped")))
    assert diagnosis.evidence[0] == (
        "the server holds 1048576 of 2000000 bytes and took none more on a resumed attempt"
    )
    assert "451 Failure writing to local file." in diagnosis.evidence[1]
    assert "keep" in diagnosis.keys


def test_certificate_verdict_gives_the_pin_to_set() -> None:
    diagnosis = diagnose(next(case[1] for case in CASES if case[0] == "certificate not verified"))
    text = suggestion_text(diagnosis, "nightly", "offsite", Path("jobs.toml"), None)
    assert f'tls_fingerprint = "{CERT.fingerprint}"' in text
    assert "certificate subject: CN=ftp.example.com" in text
    assert "issuer: CN=Example CA" in text and "valid until: 2027-01-01 00:00:00 UTC" in text
    assert "Where: in jobs.toml, under [destinations.offsite]: tls_ca_file, tls_fingerprint" in text


@pytest.mark.parametrize(
    ("failure", "category", "passive"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classification(failure: Failure, category: Category, passive: bool | None) -> None:
    diagnosis = diagnose(failure)
    assert diagnosis.category is category
    assert diagnosis.passive_should_be is passive
    assert diagnosis.evidence, "every diagnosis quotes evidence"


def test_passive_suggestion_quotes_reply_address_and_change() -> None:
    failure = CASES[0][1]
    probe = ProbeResult(passive=False, ok=True, detail="3 entries listed")
    text = suggestion_text(
        diagnose(failure), "nightly", "offsite", Path("/etc/backupagent/jobs.toml"), probe
    )
    assert "FTP client command: PASV" in text
    assert "FTP server reply: 227 Entering Passive Mode (10,0,0,2,156,64)." in text
    assert "10.0.0.2:40000: timed out after 5s" in text
    assert "Verified: a directory listing in active mode worked from this host." in text
    assert text.endswith("in /etc/backupagent/jobs.toml, under [jobs.nightly], set passive = false")


def test_active_suggestion_quotes_port_and_425() -> None:
    failure = CASES[3][1]
    probe = ProbeResult(passive=True, ok=True, detail="ok")
    text = suggestion_text(diagnose(failure), "nightly", "offsite", Path("jobs.toml"), probe)
    assert "FTP client command: PORT 10,0,0,1,200,10" in text
    assert "FTP server reply: 425 Failed to establish connection." in text
    assert text.endswith("set passive = true")


def test_neither_mode_works_points_at_firewall_not_flip() -> None:
    probe = ProbeResult(passive=False, ok=False, detail="timed out after 5s")
    text = suggestion_text(diagnose(CASES[0][1]), "nightly", "offsite", Path("jobs.toml"), probe)
    assert "neither mode works" in text
    assert "passive port range" in text
    assert "set passive" not in text
    assert 'type = "sftp"' not in text  # nothing was seen on port 22


def test_neither_mode_works_and_ssh_answers_suggests_sftp() -> None:
    probe = ProbeResult(passive=False, ok=False, detail="timed out after 5s", ssh_too=True)
    text = suggestion_text(diagnose(CASES[0][1]), "nightly", "offsite", Path("jobs.toml"), probe)
    assert "passive port range" in text
    assert 'a [destinations.offsite] with type = "sftp"' in text
    assert "set passive" not in text


def test_login_advice_never_mentions_a_flip() -> None:
    text = suggestion_text(
        diagnose(_case("wrong password")), "nightly", "offsite", Path("jobs.toml"), None
    )
    assert "FTP server reply: 530 Login incorrect." in text
    assert "password" in text
    assert "set passive" not in text
    assert text.endswith(
        "Where: in jobs.toml, under [destinations.offsite]: user, password_file, password_env, password"
    )


def _reply_failure(code_line: str) -> Failure:
    return Failure(FailureKind.REPLY, True, (*LOGGED_IN, c("STOR a"), r(code_line)), code_line[:3])


@pytest.mark.parametrize(
    ("failure", "transient"),
    [
        (_reply_failure("421 Service not available, closing control connection."), True),
        (_reply_failure("426 Connection closed; transfer aborted."), True),
        (_reply_failure("450 File unavailable."), True),
        (_reply_failure("451 Local error in processing."), True),
        (_reply_failure("530 Login incorrect."), False),
        (_reply_failure("550 Permission denied."), False),
        (_reply_failure("552 Quota exceeded."), False),
        (_reply_failure("553 Could not create file."), False),
        (_reply_failure("425 Failed to establish connection."), False),
        (
            Failure(
                FailureKind.DATA_TRANSFER, True, LOGGED_IN, "after 5 bytes: timed out after 5s"
            ),
            True,
        ),
        (Failure(FailureKind.CONTROL_LOST, True, LOGGED_IN, "connection reset by peer"), True),
        (Failure(FailureKind.CONTROL_CONNECT, True, (), "connection refused", "h:21"), True),
        (
            Failure(
                FailureKind.CONTROL_CONNECT,
                True,
                (),
                "name lookup failed (Name or service not known)",
                "nohost:21",
            ),
            False,
        ),
        (
            Failure(FailureKind.DATA_CONNECT, True, LOGGED_IN, "timed out after 5s", "h:40000"),
            False,
        ),
        (Failure(FailureKind.TLS, True, LOGGED_IN, "certificate verify failed"), False),
        (_reply_failure("500 OOPS: priv_sock_send_cmd"), True),  # vsftpd's session died
        (_reply_failure("500 Unknown command."), False),
        (
            Failure(FailureKind.NO_PROGRESS, True, LOGGED_IN, "stopped again", stored=1, size=2),
            False,
        ),
    ],
)
def test_transient_failures(failure: Failure, transient: bool) -> None:
    assert is_transient(failure) is transient
