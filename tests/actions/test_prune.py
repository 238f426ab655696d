"""prune.plan: the one retention plan, for the end of a run and for `prune` (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from backupagent.actions import prune
from backupagent.actions.prune import plan
from backupagent.config import Retention
from backupagent.destinations.local import LocalDirectory

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


def backup(day: int, hour: int = 3, job: str = "www") -> list[str]:
    backup_id = f"{job}-202611{day:02d}T{hour:02d}0000.000Z-abcdef"
    return [f"{backup_id}.manifest.json", f"{backup_id}.tar.zst.0001"]


@pytest.mark.parametrize(
    ("names", "retention", "kept", "deleted", "stale"),
    [
        # the newest `keep` stay; deleted oldest first
        (backup(1) + backup(2) + backup(3), Retention(keep=1), ["03"], ["01", "02"], []),
        # another job's backups are not this job's business
        (backup(1, job="shop") + backup(2), Retention(keep=1), ["02"], [], []),
        # an upload older than the grace period is stale; a younger one is left alone
        (
            [
                *backup(2),
                "www-20261101T030000.000Z-abcdef.tar.zst.0001.partial",
                "www-20261202T110000.000Z-abcdef.tar.zst.0001.partial",
            ],
            Retention(keep=5, partial_grace_hours=24),
            ["02"],
            [],
            ["www-20261101T030000.000Z-abcdef.tar.zst.0001.partial"],
        ),
        # keep_daily keeps the newest of each day on top of `keep`
        (
            backup(1, 1) + backup(1, 2) + backup(2, 1),
            Retention(keep=1, keep_daily=2),
            ["02", "01"],
            ["01"],
            [],
        ),
    ],
)
def test_plan(
    names: list[str], retention: Retention, kept: list[str], deleted: list[str], stale: list[str]
) -> None:
    planned = plan("www", names, retention, NOW)
    day = slice(10, 12)  # www-202611DD...
    assert [d.backup.backup_id[day] for d in planned.decisions if d.keep] == kept
    assert [d.backup.backup_id[day] for d in planned.doomed] == deleted
    assert planned.stale == stale
    assert all(d.reasons for d in planned.decisions)


def test_apply_deletes_each_manifest_before_its_volumes(tmp_path) -> None:
    nas = LocalDirectory(tmp_path / "nas", retention=Retention(keep=1))
    nas.check()
    for name in backup(1) + backup(2):
        nas.publish_bytes(b"x", name)
    deleted: list[list[str]] = []
    delete = nas.delete
    nas.delete = lambda names: (deleted.append(list(names)), delete(names))  # type: ignore[method-assign]
    prune.apply(nas, "www")
    assert deleted == [backup(1)]  # manifest first: from then on it is no longer complete
    assert sorted(nas.names()) == sorted(backup(2))
