"""Rows per table of a MySQL/MariaDB dump, counted from the SQL as the dump tool writes it.

The counts are those of the dump's own snapshot (mariadb-dump --single-transaction
cannot share it with another session), and the restore drill compares them with what
a load of the dump produced. A table's rows are the tuples between its `LOCK TABLES
`t` WRITE;` and `UNLOCK TABLES;` lines (rows_in). Quoted strings never hold a raw
newline (the tool writes \\n), so a newline is always outside one: the SQL is counted
up to the last newline of each chunk, and the rest is held for the next.
"""

from __future__ import annotations

import re

LINE_LIMIT = 64 << 20  # a longer line (one huge row) is not held: its table goes uncounted

_NAME = rb"`((?:[^`\n]|``)+)`"
# Each pattern starts with the newline before its line (a literal prefix: re finds
# it at memchr speed; ^ with re.M is tried at every byte and ran at 200 MiB/s).
_LOCK = re.compile(rb"\nLOCK TABLES " + _NAME + rb" WRITE;(?=\n)")
_UNLOCK = b"\nUNLOCK TABLES;\n"
# an INSERT statement's head, with its column list when the tool writes one
_HEAD = re.compile(rb"INSERT INTO `(?:[^`\n]|``)+` (?:\((?:`(?:[^`\n]|``)*`(?:, )?)+\) )?VALUES")
_INSERT = b"\nINSERT INTO "
_ESCAPE = re.compile(rb"\\.", re.S)


def tuples(sql: bytes) -> int:
    """The "(" outside quoted strings: one per row in a data section's VALUES lists."""
    if b"\\" in sql:  # \' and \\ are gone before the quotes are paired
        sql = _ESCAPE.sub(b"", sql)
    if b"'" in sql:
        sql = b"".join(sql.split(b"'")[::2])
    return sql.count(b"(")


def rows_in(sql: bytes, start: int, stop: int) -> int:
    """The rows in sql[start:stop], whole lines of a table's data section, each line
    after a newline (sql[start] is one).

    mariadb-dump 10.11 writes a row per line: a line that starts with "(" starts a row
    (a string cannot hold a raw newline), so those are counted at memchr speed. An
    INSERT line that goes on after VALUES holds its rows itself (mysqldump, older
    mariadb-dump): its tuples are counted one by one."""
    rows = sql.count(b"\n(", start, stop)
    at = sql.find(_INSERT, start, stop)
    while at >= 0:
        end = sql.find(b"\n", at + 1, stop)
        line = sql[at + 1 : end if end >= 0 else stop]
        head = _HEAD.match(line)
        if head is not None:
            rows += tuples(line[head.end() :])
        at = sql.find(_INSERT, end, stop) if end >= 0 else -1
    return rows


def _name(quoted: bytes) -> str:
    return quoted.replace(b"``", b"`").decode("utf-8", "replace")


class MysqlRows:
    """Fed the dump chunk by chunk (`write`); `counts` holds the rows of every table
    whose data it saw whole."""

    def __init__(self) -> None:
        self._rows: dict[str, int] = {}
        self._uncounted: set[str] = set()
        self._table: str | None = None
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._skipping = False  # through the rest of a line over LINE_LIMIT

    @property
    def counts(self) -> dict[str, int]:
        return {t: n for t, n in self._rows.items() if t not in self._uncounted}

    def write(self, data: bytes) -> None:
        end = data.rfind(b"\n")
        if end < 0:
            self._hold(data)
            return
        first = data.find(b"\n")
        if self._skipping:
            self._skipping = False
        else:  # the line begun in earlier chunks: one small copy
            self._held.append(data[: first + 1])
            line = b"\n" + b"".join(self._held)
            self._lines(line, 0, len(line))
        self._held.clear()
        self._held_bytes = 0
        if first < end:
            self._lines(data, first, end + 1)  # in place: data[first] is a newline
        self._hold(data[end + 1 :])

    def _hold(self, piece: bytes) -> None:
        if self._skipping or not piece:
            return
        self._held_bytes += len(piece)
        if self._held_bytes > LINE_LIMIT:
            if self._table is not None:
                self._uncounted.add(self._table)
            self._held.clear()
            self._held_bytes = 0
            self._skipping = True
            return
        self._held.append(piece)

    def _lines(self, sql: bytes, pos: int, end: int) -> None:
        """Count sql[pos:end]: whole lines, each after a newline (sql[pos] is one, and
        sql[end - 1]); sections open and close at line starts."""
        while pos < end - 1:
            if self._table is None:
                lock = _LOCK.search(sql, pos, end)
                if lock is None:
                    return
                self._table = _name(lock.group(1))
                self._rows.setdefault(self._table, 0)
                pos = lock.end()  # at the newline ending the LOCK TABLES line
                continue
            stop = sql.find(_UNLOCK, pos, end)
            self._rows[self._table] += rows_in(sql, pos, end if stop < 0 else stop + 1)
            if stop < 0:
                return
            self._table = None
            pos = stop + len(_UNLOCK) - 1  # at the newline ending UNLOCK TABLES;
