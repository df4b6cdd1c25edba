"""The sync-status logic (tasks/sync/status.py) over constructed days: each state, its reason, the window,
the count refresh and its failures, the notes it leaves, the file checks. Days are fixed dates: nothing here
reads the calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from tasks.errors import ConnectionDroppedError, NothingCommittedError, RetriableError, ServerError
from tasks.lake.commit import Lake
from tasks.lake.daynotes import DayNote, note_key, read_note, write_note
from tasks.lake.manifest import Manifest, ManifestFile
from tasks.lake.store import LocalStore
from tasks.schema import EVENTS_TABLE, SYNC_STATES, SYNC_STATUS_SCHEMA
from tasks.sync.status import DayFacts, build_status, day_row, window

DAY = date(2026, 3, 10)
EXPORTED = datetime(2026, 3, 11, 0, 30, tzinfo=UTC)
CHECKED = EXPORTED + timedelta(hours=2)
NOW = EXPORTED + timedelta(hours=3)


def manifest(day: date = DAY, rows: int = 10, exported: datetime = EXPORTED, **extra: object) -> Manifest:
    values: dict[str, object] = {
        "table": EVENTS_TABLE,
        "partition": day.isoformat(),
        "files": (),
        "rows": rows,
        "fingerprint": "0" * 16,
        "format": "parquet",
        "run_id": "run",
        "exported_at": exported.isoformat(timespec="seconds"),
        "event_counts": {"a": 6, "b": 4},
    }
    return Manifest(**(values | extra))  # type: ignore[arg-type]


def counted(**counts: int) -> DayNote:
    return DayNote(mixpanel_counts=counts, checked_at=CHECKED.isoformat())


def state(facts: DayFacts, last: date | None = DAY) -> tuple[str, str | None, dict[str, object]]:
    row = day_row(facts, last, NOW)
    assert row["state"] in SYNC_STATES
    return str(row["state"]), row["reason"], row  # type: ignore[return-value]


def test_equal_counts_are_in_sync_and_show_no_difference_whatever_duplicates_the_files_hold() -> None:
    m = manifest(rows=12)  # two duplicates: the export's deduplicated counts are 6 + 4
    name, reason, row = state(DayFacts(DAY, m, m.event_counts, counted(a=6, b=4)))
    assert (name, reason) == ("in_sync", None)
    assert (row["rows_held"], row["mixpanel_rows"], row["difference"]) == (12, 10, 0)
    assert row["exported_at"] == EXPORTED and row["checked_at"] == CHECKED and row["filter"] is None


def test_a_count_that_differs_after_the_day_ended_differs_and_says_both_counts() -> None:
    m = manifest()
    name, reason, row = state(DayFacts(DAY, m, m.event_counts, counted(a=9, b=4)))
    assert name == "differs" and row["difference"] == -3
    assert "Mixpanel counts 13 events on 2026-03-10, the export counted 10" in str(reason)


def test_a_day_exported_before_it_ended_that_does_not_match_is_behind() -> None:
    early = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)
    m = manifest(exported=early)
    facts = DayFacts(
        DAY, m, m.event_counts, DayNote(mixpanel_counts={"a": 9, "b": 4}, checked_at=NOW.isoformat())
    )
    name, reason, _ = state(facts)
    assert name == "behind" and "before it ended" in str(reason)
    # the same early export that matches is in sync
    assert (
        state(
            DayFacts(
                DAY, m, m.event_counts, DayNote(mixpanel_counts={"a": 6, "b": 4}, checked_at=NOW.isoformat())
            )
        )[0]
        == "in_sync"
    )


def test_a_day_with_no_version_is_missing_before_the_last_committed_day_and_behind_after_it() -> None:
    name, reason, row = state(DayFacts(DAY), last=DAY + timedelta(days=2))
    assert name == "missing" and "backfill" in str(reason) and row["rows_held"] is None
    name, reason, _ = state(DayFacts(DAY), last=DAY - timedelta(days=1))
    assert name == "behind" and "not exported yet (the last committed day is 2026-03-09)" in str(reason)


def test_a_refusal_after_the_committed_export_is_refused_and_an_older_one_is_forgotten() -> None:
    m = manifest()
    later = DayNote(
        mixpanel_counts={"a": 6, "b": 4},
        checked_at=CHECKED.isoformat(),
        refusal="2026-03-10 was not replaced: the new export holds 1 rows",
        refused_at=(EXPORTED + timedelta(minutes=5)).isoformat(),
    )
    assert state(DayFacts(DAY, m, m.event_counts, later))[:2] == ("refused", later.refusal)
    earlier = msgspec.structs.replace(later, refused_at=(EXPORTED - timedelta(days=1)).isoformat())
    assert state(DayFacts(DAY, m, m.event_counts, earlier))[0] == "in_sync"


def test_unknown_stale_or_unreadable_counts_are_unchecked_with_why() -> None:
    m = manifest()
    assert "never asked" in str(state(DayFacts(DAY, m, m.event_counts))[1])
    stale = DayNote(mixpanel_counts={"a": 6, "b": 4}, checked_at=(EXPORTED - timedelta(hours=1)).isoformat())
    name, reason, row = state(DayFacts(DAY, m, m.event_counts, stale))
    assert name == "unchecked" and "before the day's export" in str(reason)
    assert row["mixpanel_rows"] == 10  # the last count recorded is still shown
    failed = DayFacts(DAY, m, m.event_counts, counted(a=6, b=4), count_error="Mixpanel answered 429")
    assert state(failed)[:2] == ("unchecked", "Mixpanel answered 429")


def test_purged_rows_explain_an_equal_or_lower_count_but_not_more() -> None:
    m = manifest(rows=8, purged_rows=2)
    name, reason, _ = state(DayFacts(DAY, m, m.event_counts, counted(a=6, b=4)))
    assert name == "purged" and "still counts them" in str(reason)
    name, reason, _ = state(DayFacts(DAY, m, m.event_counts, counted(a=4, b=4)))
    assert name == "purged" and "has deleted them too" in str(reason)
    assert state(DayFacts(DAY, m, m.event_counts, counted(a=3, b=4)))[0] == "differs"  # 3 > 2 purged
    assert state(DayFacts(DAY, m, m.event_counts, counted(a=7, b=4)))[0] == "differs"  # more in Mixpanel


def test_a_filtered_day_is_compared_for_its_events_only_and_shows_its_filter() -> None:
    m = manifest(event_counts={"a": 6}, event_names=("a",))
    name, _, row = state(DayFacts(DAY, m, m.event_counts, counted(a=6, b=400)))
    assert name == "in_sync" and row["mixpanel_rows"] == 6
    assert row["filter"] == "event_names=['a']"


def test_damage_comes_first() -> None:
    m = manifest()
    assert state(DayFacts(DAY, m, None, counted(a=6, b=4), damage="gone"))[:2] == ("damaged", "gone")


def test_the_window_starts_at_the_first_committed_day_or_days_back() -> None:
    assert window(DAY, 3, date(2026, 1, 1)) == [DAY - timedelta(days=2), DAY - timedelta(days=1), DAY]
    assert window(DAY, 90, DAY - timedelta(days=1)) == [DAY - timedelta(days=1), DAY]


# over a real local destination ------------------------------------------------------------------------


def commit_day(lake: Lake, day: date, rows: int = 10, **extra: object) -> Manifest:
    """A committed day: one real file named by a real manifest written where the commit puts it."""
    key = f"{lake.data_prefix(EVENTS_TABLE, day.isoformat())}part-x-s1-00000.parquet"
    lake.storage.put_bytes(key, b"not read unless verified")
    m = manifest(day, rows, EXPORTED, files=(ManifestFile(key, rows, 24),), sequence=1, **extra)
    lake.storage.put_bytes(lake.manifest_key(EVENTS_TABLE, day.isoformat()), m.encode())
    return m


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(LocalStore(tmp_path), 1)


def test_an_empty_destination_says_so_in_one_sentence(lake: Lake) -> None:
    with pytest.raises(
        NothingCommittedError, match=r"holds no committed day of mp_master_event: export a day first"
    ):
        build_status(lake, DAY)


def test_counts_are_asked_once_for_every_day_and_recorded_for_offline_use(
    lake: Lake,
) -> None:
    for offset in (0, 2):
        commit_day(lake, DAY - timedelta(days=offset))
    asked: list[tuple[list[date], set[str]]] = []

    def ask(days: list[date], names: set[str]) -> dict[date, dict[str, int]]:
        asked.append((days, names))
        return {d: {"a": 6, "b": 4 if d == DAY else 5} for d in days}

    status = build_status(lake, DAY, ask=ask, now=NOW)
    assert asked == [([DAY - timedelta(days=2), DAY], {"a", "b"})]
    assert [(r["day"], r["state"]) for r in status.rows] == [
        (DAY - timedelta(days=2), "differs"),
        (DAY - timedelta(days=1), "missing"),
        (DAY, "in_sync"),
    ]
    assert not status.healthy and status.table().schema == SYNC_STATUS_SCHEMA
    assert read_note(lake, DAY.isoformat()) == DayNote(
        mixpanel_counts={"a": 6, "b": 4}, checked_at=NOW.isoformat(timespec="seconds")
    )
    # offline: the same states from the notes alone
    offline = build_status(lake, DAY, now=NOW + timedelta(hours=1))
    assert [r["state"] for r in offline.rows] == ["differs", "missing", "in_sync"]
    assert "last committed day 2026-03-10: up to date" in offline.freshness(NOW)


def test_a_429_or_5xx_marks_the_days_unchecked_and_unreachable_keeps_the_recorded_counts(
    lake: Lake,
) -> None:
    commit_day(lake, DAY)
    write_note(lake, DAY.isoformat(), mixpanel_counts={"a": 6, "b": 4}, checked_at=CHECKED.isoformat())

    def busy(days: list[date], names: set[str]) -> dict[date, dict[str, int]]:
        raise RetriableError(
            "event counts failed 3 times, last: Mixpanel answered 429 (slow down); retrying."
        ) from ServerError("x")

    status = build_status(lake, DAY, ask=busy, now=NOW)
    assert status.rows[0]["state"] == "unchecked" and "429" in str(status.rows[0]["reason"])
    assert status.rows[0]["mixpanel_rows"] == 10 and status.notes and "could not be read" in status.notes[0]

    def away(days: list[date], names: set[str]) -> dict[date, dict[str, int]]:
        raise RetriableError("failed") from ConnectionDroppedError("the connection to Mixpanel broke")

    status = build_status(lake, DAY, ask=away, now=NOW)
    assert status.rows[0]["state"] == "in_sync" and "could not be reached" in status.notes[0]


def test_a_lost_file_or_a_corrupt_manifest_is_damaged_with_what_mends_it(
    lake: Lake,
) -> None:
    m = commit_day(lake, DAY)
    commit_day(lake, DAY - timedelta(days=1))
    lake.storage.delete([m.files[0].key])
    lake.storage.put_bytes(
        lake.manifest_key(EVENTS_TABLE, (DAY - timedelta(days=1)).isoformat()), b"{not json"
    )
    rows = build_status(lake, DAY, now=NOW).rows
    assert [r["state"] for r in rows] == ["damaged", "damaged"]
    assert "is not readable" in str(rows[0]["reason"])
    assert "1 committed file(s) are gone" in str(rows[1]["reason"])
    assert (
        "make run DEPLOYMENT=mixpanel-events/events-daily PARAMS='from_date=2026-03-10 to_date=2026-03-10'"
        in str(rows[1]["reason"])
    )


def test_an_unreadable_note_is_as_good_as_none(lake: Lake) -> None:
    commit_day(lake, DAY)
    lake.storage.put_bytes(note_key(lake, DAY.isoformat()), b"[]")
    assert build_status(lake, DAY, now=NOW).rows[0]["state"] == "unchecked"


def test_the_chart_is_an_svg_image_with_every_day_and_a_table_of_the_days_to_act_on(
    lake: Lake,
) -> None:
    import base64
    import re
    import xml.etree.ElementTree as ElementTree

    from tasks.sync.chart import COLORS, status_markdown

    for offset in range(3):
        commit_day(lake, DAY - timedelta(days=offset))

    def ask(days: list[date], names: set[str]) -> dict[date, dict[str, int]]:
        return {d: {"a": 6, "b": 4 if d != DAY else 9} for d in days}

    markdown = status_markdown(build_status(lake, DAY, ask=ask, now=NOW), "data/1")
    found = re.search(r"\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert found is not None and "<svg" not in markdown  # the UI strips inline SVG, shows a data: image
    svg = ElementTree.fromstring(base64.b64decode(found.group(1)))
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert titles == ["2026-03-08: in_sync", "2026-03-09: in_sync", "2026-03-10: differs"]
    fills = {e.get("fill") for e in svg.iter()}
    assert {COLORS["in_sync"], COLORS["differs"]} <= fills
    assert "**2 of 3 day(s) in sync**" in markdown
    assert "| 2026-03-10 | **differs** | 10 | 15 | -5 | Mixpanel counts 15 events" in markdown
