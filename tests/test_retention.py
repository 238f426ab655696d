"""Which backups retention deletes: only this job's complete ones, never the newest."""

from __future__ import annotations

import datetime as dt

import pytest

from backupagent.retention import (
    Policy,
    RemoteBackup,
    complete_backups,
    decide,
    incomplete,
    select_for_deletion,
    stale_leftovers,
)


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


def test_every_file_of_a_backup_is_its_own_and_deleted_with_it() -> None:
    """The indexes, plain or encrypted, belong to their backup: retention deletes them
    with it (manifest first), and a job's files never include another job's."""
    backup_id = "www-20261101T030000.000Z-abcdef"
    suffixes = [".tar.zst.age.0001", ".index.zst.age", ".contents.zst.age", ".contents.zst"]
    listing = [backup_id + s for s in [".manifest.json", *suffixes, ".index.zst"]]
    listing.append("www-db-20261101T030000.000Z-abcdef.contents.zst")
    (backup,) = complete_backups("www", listing)
    assert backup.names[0] == f"{backup_id}.manifest.json"
    assert sorted(backup.names[1:]) == sorted(backup_id + s for s in [*suffixes, ".index.zst"])


def calendar(start: str, count: int, step_hours: float) -> list[RemoteBackup]:
    """`count` backups every `step_hours`, as they would be named on the server."""
    first = dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC)
    out = []
    for i in range(count):
        moment = first + dt.timedelta(hours=step_hours * i)
        stamp = f"{moment:%Y%m%dT%H%M%S}.000Z"
        out.append(RemoteBackup(stamp, f"www-{stamp}-{i:06x}", True))
    return out


def kept_days(decisions) -> list[str]:
    return sorted({d.backup.stamp[:8] for d in decisions if d.keep})


@pytest.mark.parametrize(
    ("backups", "policy", "kept"),
    [
        # nightly for 120 days; keep 3, 7 daily, 4 weekly, 3 monthly
        (
            calendar("2026-07-25T03:00", 120, 24),
            Policy(3, 7, 4, 3),
            # last 7 days, plus Sundays of the last 4 ISO weeks, plus month ends
            [
                "20260930",
                "20261031",
                "20261101",
                "20261108",
                "20261115",
                "20261116",
                "20261117",
                "20261118",
                "20261119",
                "20261120",
                "20261121",
            ],
        ),
        # four backups a day: daily keeps only the newest of each day
        (
            calendar("2026-11-18T00:00", 16, 6),
            Policy(1, 3, 0, 0),
            ["20261119", "20261120", "20261121"],
        ),
        # a policy of zeros still keeps the newest
        (calendar("2026-11-01T03:00", 5, 24), Policy(0, 0, 0, 0), ["20261105"]),
    ],
)
def test_grandfather_father_son(backups, policy: Policy, kept: list[str]) -> None:
    decisions = decide(backups, policy)
    assert kept_days(decisions) == kept
    assert decisions[0].keep and decisions[0].reasons[0] == "newest"
    doomed = select_for_deletion(backups, policy)
    assert max(backups) not in doomed
    assert {d.backup for d in decisions if not d.keep} == set(doomed)


NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("backups", "policy", "kept"),
    [
        # monthly for three years: the newest of each of the last 2 years
        (
            calendar("2023-12-31T03:00", 36, 24 * 30.4),
            Policy(1, yearly=2),
            ["20251229", "20261129"],
        ),
        # nightly for 20 days: everything of the last 7 days of the host's clock
        (
            calendar("2026-11-02T03:00", 20, 24),
            Policy(1, within=dt.timedelta(days=7)),
            [f"202611{d}" for d in range(15, 22)],
        ),
    ],
)
def test_yearly_and_within(backups, policy: Policy, kept: list[str]) -> None:
    assert kept_days(decide(backups, policy, NOW)) == kept


def test_invented_backups_cannot_push_out_the_weeks_kept_within() -> None:
    """A hostile server adds 50 backups dated after the real ones: keep = 3 then keeps
    only those, but keep_within counts from this host's clock and keeps the real week."""
    real = calendar("2026-11-15T03:00", 6, 24)  # up to 2026-11-20
    fake = calendar("2026-11-21T00:00", 50, 0.1)
    decisions = decide(real + fake, Policy(3, within=dt.timedelta(days=7)), NOW)
    kept = {d.backup for d in decisions if d.keep}
    assert set(real) <= kept
    only_n = decide(real + fake, Policy(3), NOW)
    assert not any(d.keep for d in only_n if d.backup in real)  # what restic warns of


def test_every_decision_says_why() -> None:
    decisions = decide(calendar("2026-11-01T03:00", 10, 24), Policy(2, 0, 2, 0))
    reasons = {d.backup.stamp[:8]: d.reasons for d in decisions}
    assert reasons["20261110"] == ("newest", "newest of its week (weekly = 2)")
    assert reasons["20261109"] == ("one of the last 2",)
    assert reasons["20261108"] == ("newest of its week (weekly = 2)",)  # a Sunday
    assert reasons["20261107"] == ("beyond the policy",)


def test_stale_leftovers_respect_the_grace_period_and_the_exact_job() -> None:
    names = [
        "www-20261120T030000.000Z-aaaaaa.tar.zst.partial",  # two days old
        "www-20261122T030000.000Z-bbbbbb.tar.zst.partial",  # an hour old: maybe still running
        "www-20261120T030000.000Z-aaaaaa.manifest.json.partial",
        "www-20261120T030000.000Z-aaaaaa.tar.zst.0001.passive.partial",  # a fallback's
        "www-db-20261101T030000.000Z-cccccc.tar.zst.partial",  # another job's
        "www-20261101T030000.000Z-dddddd.tar.zst.0001",  # renamed, but no manifest ever came
        "www-20261101T030000.000Z-eeeeee.tar.zst.0001",  # part of a complete backup
        "www-20261101T030000.000Z-eeeeee.manifest.json",
        # job "www-20240101T000000.000Z-abcdef.x": not www's, however old its name looks
        "www-20240101T000000.000Z-abcdef.x-20261120T030000.000Z-ffffff.tar.zst.0001.partial",
        "www-20261101T030000.000Z-dddddd.tar.zst.0001.bak",  # not a name this agent gives
    ]
    now = dt.datetime(2026, 11, 22, 4, 0, tzinfo=dt.UTC)
    assert stale_leftovers("www", names, now, dt.timedelta(hours=24)) == [
        "www-20261101T030000.000Z-dddddd.tar.zst.0001",
        "www-20261120T030000.000Z-aaaaaa.manifest.json.partial",
        "www-20261120T030000.000Z-aaaaaa.tar.zst.0001.passive.partial",
        "www-20261120T030000.000Z-aaaaaa.tar.zst.partial",
    ]


def test_a_listing_of_100000_names_is_handled_in_one_pass() -> None:
    """Each name is parsed once: the quadratic version took 165 s on such a listing."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    stamps = [f"{start + dt.timedelta(minutes=i):%Y%m%dT%H%M%S}.000Z" for i in range(50_000)]
    listing = names("www", stamps[:50_000])  # 100,000 names: archive + manifest each
    backups = complete_backups("www", listing)
    assert len(backups) == 50_000 and all(len(b.data_files) == 1 for b in backups)
    assert len(select_for_deletion(backups, Policy(keep=14))) == 50_000 - 14


def test_incomplete_leftovers() -> None:
    listing = [
        *names("www", DAYS[:2]),
        "www-20261108T030000.000Z-abcdef.tar.zst.partial",
        "www-20261109T030000.000Z-fedcba.tar.zst",  # archive without manifest
        "www-db-20261109T030000.000Z-fedcba.tar.zst",
    ]
    assert incomplete("www", listing) == [
        "www-20261108T030000.000Z-abcdef.tar.zst.partial",
        "www-20261109T030000.000Z-fedcba.tar.zst",
    ]
