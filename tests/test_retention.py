"""Which backups retention deletes: only this job's complete ones, never the newest."""

from __future__ import annotations

import pytest

from backupagent.retention import complete_backups, select_for_deletion


def names(job: str, stamps: list[str], *, manifest: bool = True) -> list[str]:
    out = []
    for i, stamp in enumerate(stamps):
        backup_id = f"{job}-{stamp}-{i:06x}"
        out.append(f"{backup_id}.tar.zst")
        if manifest:
            out.append(f"{backup_id}.manifest.json")
    return out


DAYS = [f"202611{d:02d}T030000.000Z" for d in range(1, 8)]


@pytest.mark.parametrize(
    ("listing", "keep", "deleted_stamps"),
    [
        (names("www", DAYS), 3, DAYS[:4]),
        (names("www", DAYS), 7, []),
        (names("www", DAYS), 10, []),
        (names("www", DAYS[:1]), 1, []),
        (names("www", DAYS), 0, DAYS[:6]),  # keep < 1 still keeps the newest
        # another job whose name starts with ours is never touched
        (names("www", DAYS[:2]) + names("www-db", DAYS), 1, DAYS[:1]),
        # incomplete backups (no manifest) are neither counted as kept nor deleted
        (names("www", DAYS[:3]) + names("www", DAYS[3:], manifest=False), 2, DAYS[:1]),
        # temporary uploads and foreign files are ignored
        (
            [
                *names("www", DAYS[:2]),
                "www-20261108T030000.000Z-abcdef.tar.zst.partial",
                "notes.txt",
                "www-20261108T030000.000Z-abcdef.manifest.json.partial",
            ],
            1,
            DAYS[:1],
        ),
    ],
)
def test_selection(listing: list[str], keep: int, deleted_stamps: list[str]) -> None:
    backups = complete_backups("www", listing)
    doomed = select_for_deletion(backups, keep)
    assert [b.stamp for b in doomed] == deleted_stamps
    if backups:
        assert max(backups) not in doomed


def test_listing_order_does_not_matter() -> None:
    listing = names("www", DAYS)
    assert select_for_deletion(complete_backups("www", listing[::-1]), 2) == select_for_deletion(
        complete_backups("www", listing), 2
    )


def test_archive_presence_is_reported() -> None:
    listing = [n for n in names("www", DAYS[:2]) if not n.endswith(f"{DAYS[0]}-000000.tar.zst")]
    backups = complete_backups("www", listing)
    assert [b.has_archive for b in backups] == [False, True]
