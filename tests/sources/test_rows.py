"""Counting a MySQL dump's rows per table from its SQL (sources/rows.py), table-driven."""

from __future__ import annotations

import pytest

from backupagent.sources import rows
from backupagent.sources.rows import MysqlRows, tuples


def _section(table: str, body: str) -> str:
    quoted = table.replace("`", "``")
    return (
        f"--\n-- Dumping data for table `{quoted}`\n--\n\nLOCK TABLES `{quoted}` WRITE;\n"
        f"/*!40000 ALTER TABLE `{quoted}` DISABLE KEYS */;\n{body}"
        f"/*!40000 ALTER TABLE `{quoted}` ENABLE KEYS */;\nUNLOCK TABLES;\n"
    )


TRIGGER = (
    "DELIMITER ;;\n/*!50003 CREATE*/ /*!50003 TRIGGER tr AFTER INSERT ON e FOR EACH ROW\n"
    "INSERT INTO `log` VALUES (NEW.a) \n*/;;\nDELIMITER ;\n"
)

CASES = {
    "one line per statement": (
        _section("t", "INSERT INTO `t` VALUES (1,'a'),(2,'b'),(3,NULL);\n"),
        {"t": 3},
    ),
    "one line per row (mariadb-dump 10.11)": (
        _section(
            "t", "INSERT INTO `t` VALUES\n(1,'a'),\n(2,'b');\nINSERT INTO `t` VALUES\n(3,0x28);\n"
        ),
        {"t": 3},
    ),
    "the first row on the INSERT line, the others a line each": (
        _section("t", "INSERT INTO `t` VALUES (1,'(a'),\n(2,'b\\n(c'),\n(3,'');\n"),
        {"t": 3},
    ),
    "parentheses and separators inside strings": (
        _section("t", "INSERT INTO `t` VALUES (1,'a),(b'),(2,'(('),(3,'x) (y');\n"),
        {"t": 3},
    ),
    "escaped quotes and backslashes": (
        _section("t", r"INSERT INTO `t` VALUES (1,'it\'s (1)'),(2,'a\\'),(3,'\\\'(');" + "\n"),
        {"t": 3},
    ),
    "doubled quotes": (
        _section("t", "INSERT INTO `t` VALUES (1,'it''s (x'),(2,'''(''');\n"),
        {"t": 2},
    ),
    "a table name with quotes, parentheses and backticks": (
        _section("a'(b`c", "INSERT INTO `a'(b``c` VALUES (1),(2);\n"),
        {"a'(b`c": 2},
    ),
    "a column list (invisible or generated columns)": (
        _section("t", "INSERT INTO `t` (`a`, `b(`) VALUES (1,2),(3,4);\n"),
        {"t": 2},
    ),
    "an empty table": (_section("e", ""), {"e": 0}),
    "a trigger's INSERT is not a row": (
        _section("e", "") + TRIGGER + _section("log", "INSERT INTO `log` VALUES (7);\n"),
        {"e": 0, "log": 1},
    ),
    "unicode names and data": (
        _section("Grüße", "INSERT INTO `Grüße` VALUES (1,'🎉 (x'),(2,'漢字');\n"),
        {"Grüße": 2},
    ),
    "outside a data section nothing counts": (
        "INSERT INTO `t` VALUES (1),(2);\n-- Dump completed\n",
        {},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_counts_rows_per_table_wherever_the_chunks_break(case: str) -> None:
    sql, expected = CASES[case]
    data = sql.encode()
    whole = MysqlRows()
    whole.write(data)
    assert whole.counts == expected
    for size in (1, 2, 3, 7):  # cuts inside names, strings, escapes and newlines
        counter = MysqlRows()
        for at in range(0, len(data), size):
            counter.write(data[at : at + size])
        assert counter.counts == expected, size


def test_a_line_over_the_limit_leaves_its_table_uncounted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows, "LINE_LIMIT", 100)
    big = "INSERT INTO `big` VALUES (1,'" + "x" * 300 + "');\n"
    sql = _section("big", big) + _section("small", "INSERT INTO `small` VALUES (1),(2);\n")
    counter = MysqlRows()
    data = sql.encode()
    for at in range(0, len(data), 32):
        counter.write(data[at : at + 32])
    assert counter.counts == {"small": 2}


@pytest.mark.parametrize(
    ("values", "expected"),
    [(b"(1)", 1), (b"(1,'(')", 1), (b"(1,'\\')'),(2)", 2), (b"", 0), (b"(0x28,'')", 1)],
)
def test_tuples(values: bytes, expected: int) -> None:
    assert tuples(values) == expected
