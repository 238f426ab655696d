"""The end-of-run report: a suggestion's evidence and its advice, apart."""

from __future__ import annotations

import pytest

from backupagent.summary import evidence_and_advice

ROWS = [
    ("Evidence:\n  a\n  b\nChange: x", (["  a", "  b"], "Change: x")),
    ("Evidence:\n  a\n\nVerified: y\nChange: x", (["  a"], "Verified: y\nChange: x")),
    ("Evidence:\n  only facts", (["  only facts"], "")),  # no advice: no heading for it
    ("Change: x", ([], "Change: x")),  # no evidence block
    ("", ([], "")),
]


@pytest.mark.parametrize(("body", "parts"), ROWS)
def test_a_suggestion_is_its_evidence_then_its_advice(
    body: str, parts: tuple[list[str], str]
) -> None:
    assert evidence_and_advice(body) == parts
