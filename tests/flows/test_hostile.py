"""Hostile responses on a loopback server: each bad body leaves the committed day byte-identical and
fails with one sentence (issue 14)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tasks.errors import (
    FilterMismatchError,
    InflatedBodyError,
    MalformedRecordsError,
    NotJsonLinesError,
    PipelineError,
    RetriableError,
    ShrinkRefusedError,
    TruncatedStreamError,
)
from tasks.pipeline.exclude import event_rows_of
from tasks.pipeline.export import DayResult
from tasks.pipeline.resume import is_complete
from tests.conftest import local_destination, read_day
from tests.kit.hostile import DAY, ROWS, SECRET, assert_one_sentence, run
from tests.kit.hostile_server import (
    HostileServer,
    counts_of,
    epoch,
    event_line,
    good_lines,
    gzip_bomb,
    in_pieces,
)
from tests.kit.lake import committed


@pytest.fixture
def server() -> Iterator[HostileServer]:
    srv = HostileServer().start()
    yield srv
    srv.stop()


def run_lines(server: HostileServer, root: Path, run_id: str, rows: int, **settings: Any) -> list[DayResult]:
    server.serve(b"\n".join(good_lines(DAY, rows)) + b"\n")
    return run(server, root, run_id, **settings)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every committed byte: data files, edges, manifests (not staging, not the rejects files, not the day
    notes of the sync status, where a refusal is recorded)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "1").rglob("*"))
        if p.is_file()
        and "_staging" not in p.parts
        and "_rejects" not in p.parts
        and not p.relative_to(root).as_posix().startswith("1/_state/status/")
    }


def commit_good_day(server: HostileServer, root: Path) -> dict[str, bytes]:
    server.serve(b"\n".join(good_lines(DAY, ROWS)) + b"\n")
    server.counts = counts_of(DAY, ROWS)
    (result,) = run(server, root, "good")
    assert result.rows == ROWS
    return snapshot(root)


NESTED = (
    b'{"event":"deep","properties":{"time":%d,"a":' % epoch(DAY) + b"[" * 100_000 + b"]" * 100_000 + b"}}"
)
HTML = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>GET /export?token="
    + SECRET.encode()
    + b" failed</body></html>"
)
LINE = event_line("ok", {"time": epoch(DAY), "distinct_id": "u"})

# body, headers, max_rejected_lines, expected error, words the message must hold
CASES: dict[str, tuple[object, dict[str, str], int, type[PipelineError], str]] = {
    "empty body": (b"", {}, 0, ShrinkRefusedError, f"holds 0 rows where the committed version holds {ROWS}"),
    "html with 200": (HTML, {"Content_Type": "text/html"}, 10, NotJsonLinesError, "not JSON lines"),
    "newline flood": (in_pieces([(b"\n", 20 << 20)]), {}, 0, ShrinkRefusedError, f"Mixpanel counts {ROWS}"),
    "gzip bomb": (
        gzip_bomb(256 << 20),
        {"Content_Encoding": "gzip"},
        0,
        InflatedBodyError,
        "decompression bomb",
    ),
    "64 MB line": (
        in_pieces(
            [LINE + b"\n", b'{"event":"big","properties":{"time":1,"pad":"', (b"a", 64 << 20), b'"}}\n']
        ),
        {},
        0,
        MalformedRecordsError,
        "line 2: the line is longer than max_line_bytes",
    ),
    "100k-deep nesting": (LINE + b"\n" + NESTED + b"\n", {}, 0, MalformedRecordsError, "line 2"),
    "invalid utf-8 in a name": (
        LINE + b'\n{"event":"bad\xff","properties":{"time":%d}}\n' % epoch(DAY),
        {},
        0,
        MalformedRecordsError,
        "line 2: invalid JSON record: invalid UTF-8",
    ),
    "invalid utf-8 in a value": (
        LINE + b'\n{"event":"bad","properties":{"time":%d,"v":"\xc3("}}\n' % epoch(DAY),
        {},
        0,
        MalformedRecordsError,
        "line 2",
    ),
    "NaN": (
        LINE + b'\n{"event":"bad","properties":{"time":%d,"v":NaN}}\n' % epoch(DAY),
        {},
        0,
        MalformedRecordsError,
        "line 2",
    ),
    "every line rejected": (
        b'{"broken\n{"also broken\n{"and this\n',
        {},
        10,
        MalformedRecordsError,
        "every one",
    ),
    "cut inside a multi-byte character": (
        LINE + b'\n{"event":"x","properties":{"time":1,"city":"Z\xc3',
        {},
        0,
        TruncatedStreamError,
        "cut the export short",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_hostile_body_leaves_the_committed_day_byte_identical(
    server: HostileServer, tmp_path: Path, case: tuple
) -> None:
    body, headers, max_rejected, error, words = case
    before = commit_good_day(server, tmp_path)
    server.serve(body, **headers)
    started = time.monotonic()
    with pytest.raises(PipelineError) as info:
        run(server, tmp_path, "bad", max_rejected_lines=max_rejected)
    assert time.monotonic() - started < 30
    # retriable errors are raised again after the last attempt, with the cause chained
    cause = info.value.__cause__ if type(info.value) is RetriableError else info.value
    assert isinstance(cause, error), repr(info.value)
    assert words in str(info.value)
    assert_one_sentence(str(info.value))
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.rglob("_staging/**/*") if p.is_file()]


def test_a_gzip_bomb_is_not_retried(server: HostileServer, tmp_path: Path) -> None:
    server.serve(gzip_bomb(256 << 20), Content_Encoding="gzip")
    with pytest.raises(InflatedBodyError):
        run(server, tmp_path, "bad")
    assert server.requests_to("/api/2.0/export") == 1


def test_html_is_retried_then_reported_with_its_first_bytes_and_no_secret(
    server: HostileServer, tmp_path: Path
) -> None:
    server.serve(HTML, Content_Type="text/html")
    with pytest.raises(RetriableError) as info:
        run(server, tmp_path, "bad", max_rejected_lines=10)
    assert server.requests_to("/api/2.0/export") == 2
    assert "<!DOCTYPE html><html><head><title>502 Bad Gateway" in str(info.value)
    assert "token=***" in str(info.value) and SECRET not in str(info.value)


def test_an_empty_body_for_a_day_mixpanel_counts_empty_replaces_it(
    server: HostileServer, tmp_path: Path
) -> None:
    commit_good_day(server, tmp_path)
    server.serve(b"")
    # Mixpanel deleted every event of the day: its count names each of them with 0
    server.counts = {name: {DAY.isoformat(): 0} for name in ("Sign Up", "Page View")}
    (result,) = run(server, tmp_path, "confirmed")
    assert result.rows == 0
    assert server.requests_to("/api/query/events") == 1


@pytest.mark.parametrize(
    "counts",
    [{}, {"Sign Up": {DAY.isoformat(): 0}}, {"Sign Up": {}, "Page View": {}}],
    ids=["names no event", "misses a committed event", "no number for the day"],
)
def test_a_count_answer_silent_about_the_days_events_does_not_confirm_an_empty_export(
    server: HostileServer, tmp_path: Path, counts: dict[str, dict[str, int]]
) -> None:
    before = commit_good_day(server, tmp_path)
    server.serve(b"")
    server.counts = counts
    with pytest.raises(ShrinkRefusedError, match="so it cannot confirm the loss") as info:
        run(server, tmp_path, "silent")
    assert_one_sentence(str(info.value))
    assert snapshot(tmp_path) == before


def test_repeated_small_losses_are_measured_against_the_most_the_day_held(
    server: HostileServer, tmp_path: Path
) -> None:
    """1000 → 901 → 811 → …: each version loses under 10 % of the previous one, none is confirmed."""
    sizes = [1000, 901, 811, 730, 657, 592, 533, 480]
    server.serve(b"\n".join(good_lines(DAY, sizes[0])) + b"\n")
    server.counts = {}  # an answer that confirms nothing
    (first,) = run(server, tmp_path, "r0")
    assert first.rows == 1000
    (second,) = run_lines(server, tmp_path, "r1", sizes[1])  # 901 of 1000: within the tolerance
    assert second.rows == sizes[1]
    manifest = committed(local_destination(tmp_path), "mp_master_event", DAY.isoformat())
    assert (manifest.rows, manifest.held_most) == (sizes[1], 1000)
    before = snapshot(tmp_path)
    for number, rows in enumerate(sizes[2:], start=2):
        with pytest.raises(ShrinkRefusedError, match=f"holds {rows} rows where the day has held up to 1000"):
            run_lines(server, tmp_path, f"r{number}", rows)
        assert snapshot(tmp_path) == before
    # Mixpanel's count, naming every event, confirms the smaller day: the memory restarts from it
    server.counts = counts_of(DAY, sizes[-1])
    (confirmed,) = run_lines(server, tmp_path, "confirmed", sizes[-1])
    manifest = committed(local_destination(tmp_path), "mp_master_event", DAY.isoformat())
    assert (confirmed.rows, manifest.held_most) == (sizes[-1], sizes[-1])


def test_allow_shrink_resets_the_memory_and_a_purge_lowers_it_by_what_it_removed(
    server: HostileServer, tmp_path: Path
) -> None:
    from tasks.sync.purge import purge_day

    commit_good_day(server, tmp_path)
    run_lines(server, tmp_path, "allowed", 20, allow_shrink=True)
    destination = local_destination(tmp_path)
    assert committed(destination, "mp_master_event", DAY.isoformat()).held_most == 20
    run_lines(server, tmp_path, "grown", 30)
    assert committed(destination, "mp_master_event", DAY.isoformat()).held_most == 30
    removed, _ = purge_day(destination, DAY.isoformat(), {"user-0"}, "purge")
    after = committed(destination, "mp_master_event", DAY.isoformat())
    assert removed > 0 and (after.rows, after.held_most) == (30 - removed, 30 - removed)


def test_a_manifest_without_the_memory_counts_its_own_rows(server: HostileServer, tmp_path: Path) -> None:
    import msgspec

    commit_good_day(server, tmp_path)
    key = tmp_path / "1/_state/manifests/mp_master_event" / f"{DAY.isoformat()}.json"
    old = msgspec.json.decode(key.read_bytes())
    del old["held_most"]
    key.write_bytes(msgspec.json.encode(old))
    server.counts = {}
    with pytest.raises(ShrinkRefusedError, match=f"holds 30 rows where the committed version holds {ROWS}"):
        run_lines(server, tmp_path, "smaller", 30)


def test_a_shrink_is_committed_when_allowed(server: HostileServer, tmp_path: Path) -> None:
    commit_good_day(server, tmp_path)
    server.serve(b"\n".join(good_lines(DAY, 5)) + b"\n")
    with pytest.raises(ShrinkRefusedError, match=f"holds 5 rows where the committed version holds {ROWS}"):
        run(server, tmp_path, "refused")
    (result,) = run(server, tmp_path, "allowed", allow_shrink=True)
    assert result.rows == 5


def test_a_small_shrink_within_tolerance_needs_no_count(server: HostileServer, tmp_path: Path) -> None:
    commit_good_day(server, tmp_path)
    server.serve(b"\n".join(good_lines(DAY, ROWS - 2)) + b"\n")
    (result,) = run(server, tmp_path, "slightly-smaller")
    assert result.rows == ROWS - 2
    assert server.requests_to("/api/query/events") == 0


def test_a_refused_day_does_not_stop_the_other_days_of_its_request(
    server: HostileServer, tmp_path: Path
) -> None:
    other = date(2024, 1, 3)
    lines = good_lines(DAY, ROWS) + good_lines(other, 10)
    server.serve(b"\n".join(lines) + b"\n")
    server.counts = counts_of(DAY, ROWS)
    run(server, tmp_path, "good", days=[DAY, other])
    server.serve(b"\n".join(good_lines(other, 12)) + b"\n")  # DAY came back empty
    with pytest.raises(ShrinkRefusedError, match=f"{DAY} was not replaced"):
        run(server, tmp_path, "second", days=[DAY, other])
    destination = local_destination(tmp_path)
    assert committed(destination, "mp_master_event", DAY.isoformat()).run_id == "good"
    assert committed(destination, "mp_master_event", other.isoformat()).rows == 12


def test_a_filtered_run_over_a_full_day_is_refused_and_a_forced_one_records_its_filter(
    server: HostileServer, tmp_path: Path
) -> None:
    before = commit_good_day(server, tmp_path)
    server.serve(b"\n".join(line for line in good_lines(DAY, ROWS) if b'"Sign Up"' in line) + b"\n")
    with pytest.raises(
        FilterMismatchError,
        match=r"committed with every event and this run exports event_names=\['Sign Up'\]",
    ) as info:
        run(server, tmp_path, "filtered", events=("Sign Up",))
    assert_one_sentence(str(info.value))
    assert snapshot(tmp_path) == before
    (result,) = run(server, tmp_path, "forced", events=("Sign Up",), force=True)
    assert result.rows == ROWS // 2
    manifest = committed(local_destination(tmp_path), "mp_master_event", DAY.isoformat())
    assert manifest.event_names == ("Sign Up",)
    # the backfill sees a filtered day as incomplete, and an unfiltered run may replace it
    from zoneinfo import ZoneInfo

    assert not is_complete(manifest, DAY, ZoneInfo("UTC"))
    server.serve(b"\n".join(good_lines(DAY, ROWS)) + b"\n")
    (full,) = run(server, tmp_path, "full-again")
    assert full.rows == ROWS
    assert committed(local_destination(tmp_path), "mp_master_event", DAY.isoformat()).event_names is None


def test_an_empty_event_name_filter_is_a_filter(server: HostileServer, tmp_path: Path) -> None:
    before = commit_good_day(server, tmp_path)
    server.serve(b"")
    with pytest.raises(FilterMismatchError, match=r"event_names=\[''\]"):
        run(server, tmp_path, "empty-name", events=("",))
    assert snapshot(tmp_path) == before


def test_duplicate_keys_one_rule_for_columns_engines_and_the_purge(
    server: HostileServer, tmp_path: Path
) -> None:
    import duckdb

    line = (
        b'{"event":"x","properties":{"time":%d,"distinct_id":"victim","$insert_id":"i1",'
        b'"distinct_id":"other"}}' % epoch(DAY)
    )
    reversed_line = (
        b'{"event":"x","properties":{"time":%d,"distinct_id":"other","$insert_id":"i2",'
        b'"distinct_id":"victim"}}' % epoch(DAY, 1)
    )
    server.serve(line + b"\n" + reversed_line + b"\n")
    run(server, tmp_path, "dups")
    rows = read_day(tmp_path, DAY).sort("insert_id")
    # lifted column: the first occurrence, as DuckDB reads properties->>'$.distinct_id'
    engine = duckdb.execute(
        "select p::JSON->>'$.distinct_id' from (select unnest(?) as p)", [rows["properties"].to_list()]
    ).fetchall()
    assert rows["distinct_id"].to_list() == [v for (v,) in engine] == ["victim", "other"]
    # the purge matches a row under any of its values
    assert rows.filter(event_rows_of({"victim"})).height == 2
    assert rows.filter(event_rows_of({"other"})).height == 2
    assert rows.filter(event_rows_of({"nobody"})).height == 0
    # end to end: purging the id a row names second removes it, though its lifted column says "other"
    from tasks.sync.purge import purge_day

    assert purge_day(local_destination(tmp_path), DAY.isoformat(), {"victim"}, "purge") == (2, 0)
    assert read_day(tmp_path, DAY).height == 0
    assert isinstance(rows, pl.DataFrame)


def test_a_later_duplicate_id_key_counts_however_it_is_spelled(server: HostileServer, tmp_path: Path) -> None:
    """Spaces at the colon and \\u escapes in the key or the value spell the same key and id: the
    lifted column keeps the first occurrence, and the purge and the export filter see every one."""
    spellings = [
        (b'"distinct_id":"first"', b'"distinct_id": "victim"'),
        (b'"distinct_id":"first"', b'"distinct_id" : "victim"'),
        (b'"distinct_id":"first"', b'"distinct_id":"\\u0076ictim"'),
        (b'"distinct_id":"first"', b'"distinct\\u005fid":"victim"'),
        (b'"distinct\\u005fid":"first"', b'"distinct_id":"victim"'),
        (b'"$user_id":"first"', b'"$user\\u005fid":"victim"'),
        (b'"$device_id":"first"', b'"\\u0024device_id":"victim"'),
    ]
    lines = [
        b'{"event":"x","properties":{"time":%d,%s,"$insert_id":"i%d",%s}}' % (epoch(DAY, n), a, n, b)
        for n, (a, b) in enumerate(spellings)
    ]
    server.serve(b"\n".join(lines) + b"\n")
    run(server, tmp_path, "spelled")
    rows = read_day(tmp_path, DAY).sort("insert_id")
    lifted = rows.select(pl.coalesce("distinct_id", "user_id", "device_id")).to_series().to_list()
    assert lifted == ["first"] * len(spellings)
    assert rows.filter(event_rows_of({"victim"})).height == len(spellings)
    assert rows.filter(event_rows_of({"first", "nobody"})).height == len(spellings)
    assert rows.filter(event_rows_of({"nobody"})).height == 0
    from tasks.sync.purge import purge_day

    assert purge_day(local_destination(tmp_path), DAY.isoformat(), {"victim"}, "purge") == (len(spellings), 0)
    assert read_day(tmp_path, DAY).height == 0
    (again,) = run(server, tmp_path, "filtered", excluded_ids=frozenset({"victim"}), allow_shrink=True)
    assert (again.rows, again.excluded) == (0, len(spellings))


def test_decoder_failures_count_against_max_rejected_lines(server: HostileServer, tmp_path: Path) -> None:
    good = good_lines(DAY, ROWS)
    bad = [NESTED, b'{"event":"bad\xff","properties":{"time":%d}}' % epoch(DAY)]
    server.serve(b"\n".join(good[:10] + bad + good[10:]) + b"\n")
    with pytest.raises(MalformedRecordsError, match=r"export 2024-01-02: 2 malformed .* first at line 11: "):
        run(server, tmp_path, "strict", max_rejected_lines=1)
    (result,) = run(server, tmp_path, "tolerant", max_rejected_lines=2)
    assert (result.rows, result.rejected_lines) == (ROWS, 2)


def test_every_shrinking_day_of_a_request_is_checked_with_one_count_request(
    server: HostileServer, tmp_path: Path
) -> None:
    other = date(2024, 1, 3)
    server.serve(b"\n".join(good_lines(DAY, ROWS) + good_lines(other, ROWS)) + b"\n")
    server.counts = {}
    run(server, tmp_path, "good", days=[DAY, other])
    before = snapshot(tmp_path)
    server.serve(b"")
    # Mixpanel still counts DAY's events, and none on the other day
    server.counts = {n: c | {other.isoformat(): 0} for n, c in counts_of(DAY, ROWS).items()}
    with pytest.raises(ShrinkRefusedError) as info:
        run(server, tmp_path, "empty", days=[DAY, other])
    assert server.requests_to("/api/query/events") == 1
    assert f"{DAY} was not replaced" in str(info.value) and str(other) not in str(info.value)
    assert_one_sentence(str(info.value))
    assert committed(local_destination(tmp_path), "mp_master_event", other.isoformat()).rows == 0
    assert snapshot(tmp_path) != before
