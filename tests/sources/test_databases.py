"""Names and secrets that come from tenants or servers, made data for each tool."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backupagent.config import PostgresDatabase
from backupagent.sources.databases import member_label, pg_dbname, pg_passfile, spool_file


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("wordpress", "wordpress"),
        ("shop_2.old-copy$", "shop_2.old-copy$"),
        ("site1_/../../x", "site1_%2F..%2F..%2Fx"),
        ("..", ".."),  # only ever followed by .sql/.pgdump/.sqlite3
        ("a b", "a%20b"),
        ("two\nlines", "two%0Alines"),
        ("100%", "100%25"),
        ("caf\u00e9", "caf%C3%A9"),
        ("\udcff", "%FF"),  # a byte that was not UTF-8
    ],
)
def test_member_label(name: str, label: str) -> None:
    assert member_label(name) == label
    assert "/" not in member_label(name) and "\0" not in member_label(name)


def test_member_labels_of_different_names_differ() -> None:
    names = ["a/b", "a%2Fb", "a_b", "a b", "a%20b", "a.b"]
    assert len({member_label(n) for n in names}) == len(names)


@pytest.mark.parametrize(
    ("name", "conninfo"),
    [
        ("plain", "dbname='plain'"),
        ("host=127.0.0.1 port=1 dbname=x", "dbname='host=127.0.0.1 port=1 dbname=x'"),
        ("it's", "dbname='it\\'s'"),
        ("back\\slash", "dbname='back\\\\slash'"),
        ("postgresql://elsewhere/x", "dbname='postgresql://elsewhere/x'"),
    ],
)
def test_pg_dbname_is_one_quoted_keyword(name: str, conninfo: str) -> None:
    assert pg_dbname(name) == conninfo


def _pg(**fields: object) -> PostgresDatabase:
    return PostgresDatabase.model_validate({"type": "postgresql", "name": "x", **fields})


@pytest.mark.parametrize(
    ("db", "lines"),
    [
        (_pg(host="db.example", port=5433, user="u"), ["db.example:5433:*:u:p\\:w\\\\"]),
        (_pg(), ["localhost:*:*:*:p\\:w\\\\"]),
        (
            _pg(host="/run/postgresql", user="u:x"),
            ["/run/postgresql:*:*:u\\:x:p\\:w\\\\", "localhost:*:*:u\\:x:p\\:w\\\\"],
        ),
    ],
)
def test_the_passfile_names_the_configured_server_only(
    db: PostgresDatabase, lines: list[str]
) -> None:
    """Never `*` for the host: a connection elsewhere must not be handed the password."""
    assert pg_passfile(db, "p:w\\").splitlines() == lines


@pytest.mark.parametrize("password", ["a\nb", "a\rb", "a\0b", "a\tb"])
def test_a_passfile_password_with_a_control_character_is_refused(password: str) -> None:
    with pytest.raises(ValueError):
        pg_passfile(_pg(), password)


def test_spool_files_are_new_private_and_never_follow_a_name(tmp_path: Path) -> None:
    first = spool_file(tmp_path, "../../etc/x", ".sql.zst")
    second = spool_file(tmp_path, "../../etc/x", ".sql.zst")
    assert first != second and first.parent == tmp_path == second.parent
    assert stat.S_IMODE(os.lstat(first).st_mode) == 0o600
    assert first.name.startswith("..%2F..%2Fetc%2Fx.")
