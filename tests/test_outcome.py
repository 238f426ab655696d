"""The words a run's result is stored and printed with are part of the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupagent.outcome import BACKUP_TRIGGERS, OK, Outcome, RunResult, Trigger


def test_stored_words_are_the_contracts() -> None:
    assert [o.value for o in Outcome] == ["running", "success", "warning", "failed", "aborted"]
    assert [t.value for t in Trigger] == ["manual", "schedule", "catch-up", "verify", "drill"]
    assert Trigger.VERIFY not in BACKUP_TRIGGERS and Trigger.DRILL not in BACKUP_TRIGGERS


@pytest.mark.parametrize(
    ("outcome", "code"),
    [(Outcome.SUCCESS, 0), (Outcome.WARNING, 0), (Outcome.FAILED, 1), (Outcome.ABORTED, 1)],
)
def test_exit_codes(outcome: Outcome, code: int) -> None:
    result = RunResult("www", "r", Path("log"), outcome=outcome)
    assert result.exit_code == code and result.ok is (outcome in OK)
