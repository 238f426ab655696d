"""Rows per table of a MySQL/MariaDB dump, counted from the SQL as the dump tool writes it.

The counts are those of the dump's own snapshot (mariadb-dump --single-transaction
cannot share it with another session), and the restore drill compares them with what
a load of the dump produced. A table's rows are the tuples between its `LOCK TABLES
`t` WRITE;` and `UNLOCK TABLES;` lines: every "(" outside a quoted string there, once
the INSERT and ALTER TABLE lines' own names are taken out. Quoted strings never hold a
raw newline (the tool writes \\n), so a newline is always outside one: the SQL is
counted up to the last newline of each chunk, and the rest is held for the next.
"""

from __future__ import annotations

import re

LINE_LIMIT = 64 << 20  # a longer line (one huge row) is not held: its table goes uncounted

_NAME = rb"`((?:[^`\n]|``)+)`"
# Each pattern starts with the newline before its line (a literal prefix: re finds
# it at memchr speed; ^ with re.M is tried at every byte and ran at 200 MiB/s).
_LOCK = re.compile(rb"\nLOCK TABLES " + _NAME + rb" WRITE;(?=\n)")
_UNLOCK = b"\nUNLOCK TABLES;\n"
# what carries a "(" or a quote in a data section but is not a row: the statement's
# head, with its column list when the tool writes one, and the key toggles
_NOT_ROWS = (
    re.compile(rb"\nINSERT INTO `(?:[^`\n]|``)+` (?:\((?:`(?:[^`\n]|``)*`(?:, )?)+\) )?VALUES"),
    re.compile(rb"\n/\*!40000 ALTER TABLE `(?:[^`\n]|``)+` (?:DIS|EN)ABLE KEYS \*/;(?=\n)"),
)
_ESCAPE = re.compile(rb"\\.", re.S)


def tuples(sql: bytes) -> int:
    """The "(" outside quoted strings: one per row in a data section's VALUES lists."""
    if b"\\" in sql:  # \' and \\ are gone before the quotes are paired
        sql = _ESCAPE.sub(b"", sql)
    if b"'" in sql:
        sql = b"".join(sql.split(b"'")[::2])
    return sql.count(b"(")


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
            self._skipping, start = False, first + 1
        elif self._held:
            self._held.append(data[: first + 1])
            self._block(b"".join(self._held))
            start = first + 1
        else:
            start = 0
        self._held.clear()
        self._held_bytes = 0
        if start <= end:
            self._block(data[start : end + 1])
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

    def _block(self, lines: bytes) -> None:
        """Count whole lines (ending in a newline): sections open and close at line starts."""
        block = b"\n" + lines  # so that every line, the first too, follows a newline
        pos = 0
        while pos < len(block) - 1:
            if self._table is None:
                lock = _LOCK.search(block, pos)
                if lock is None:
                    return
                self._table = _name(lock.group(1))
                self._rows.setdefault(self._table, 0)
                pos = lock.end()
                continue
            stop = block.find(_UNLOCK, pos)
            section = block[pos : len(block) if stop < 0 else stop + 1]
            for pattern in _NOT_ROWS:
                section = pattern.sub(b"\n", section)
            self._rows[self._table] += tuples(section)
            if stop < 0:
                return
            self._table = None
            pos = stop + len(_UNLOCK) - 1  # at the newline ending UNLOCK TABLES;
