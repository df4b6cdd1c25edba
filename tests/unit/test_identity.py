"""Identity edges and resolution: hand-built scenarios whose answers are written out here."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime

import polars as pl
import pytest

from tasks.pipeline.identity import EDGE_SCHEMA, edges_from_events, is_uuid4, resolve, user_counts
from tasks.schema import MAPPINGS_FRAME_SCHEMA

EVENTS_SCHEMA = pl.Schema(
    {
        "device_id": pl.String(),
        "distinct_id": pl.String(),
        "event_name": pl.String(),
        "insert_id": pl.String(),
        "properties": pl.String(),
        "time": pl.Datetime("us", "UTC"),
        "user_id": pl.String(),
    }
)


def ts(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, minute, tzinfo=UTC)


def events(*rows: tuple[object, ...]) -> pl.DataFrame:
    """Rows as (device_id, distinct_id, event_name, insert_id, properties, time, user_id)."""
    return pl.DataFrame(list(rows), schema=EVENTS_SCHEMA, orient="row")


# Original ID Merge's $identify only merges a UUID v4 anon id, so the scenarios below name anon ids
# (anon, anon1, a1, anon042, ...) and ``edges`` sends a UUID v4 made from the name in their place;
# ``rows`` translates the answer back to the names and sorts it like ``resolve`` does.
ANON_NAME = re.compile(r"^(anon\d*|a\d)$")
UUIDS: dict[str, str] = {}
NAMES: dict[str, str] = {}


def anon(name: str) -> str:
    """The UUID v4 standing for an anon id's name."""
    if name not in UUIDS:
        text = str(uuid.UUID(bytes=hashlib.md5(name.encode()).digest(), version=4))
        UUIDS[name], NAMES[text] = text, name
    return UUIDS[name]


def _id(value: object) -> object:
    return anon(value) if isinstance(value, str) and ANON_NAME.match(value) else value


def edges(*rows: tuple[object, ...]) -> pl.DataFrame:
    """Rows as (kind, a, b, time) or (kind, a, b, time, insert_id); anon names become UUIDs."""
    full = [(kind, _id(a), _id(b), *rest) for kind, a, b, *rest in rows]
    full = [row if len(row) == 5 else (*row, None) for row in full]
    return pl.DataFrame(full, schema=EDGE_SCHEMA, orient="row")


def rows(frame: pl.DataFrame) -> list[tuple[object, ...]]:
    if frame.columns != MAPPINGS_FRAME_SCHEMA.names():
        return frame.rows()
    named = [(NAMES.get(d, d), NAMES.get(r, r)) for d, r in frame.rows()]
    return sorted(named, key=lambda row: (row[1], row[0]))


def names(series: pl.Series) -> list[str]:
    return [NAMES.get(value, value) for value in series.to_list()]


def du(device: str, user: str, time: datetime, insert_id: str | None = None) -> tuple[object, ...]:
    return ("device_user", f"$device:{device}", user, time, insert_id)


# --------------------------------------------------------------------------- edges_from_events


def test_simplified_edges_keep_one_earliest_edge_per_device_user_pair() -> None:
    frame = events(
        ("d1", "$device:d1", "Page View", "i1", "{}", ts(1, 9), None),
        ("d1", "u1", "Page View", "i3", "{}", ts(1, 11), "u1"),
        ("d1", "u1", "Login", "i2", "{}", ts(1, 10), "u1"),
        ("d2", "u1", "Login", "i4", "{}", ts(1, 12), "u1"),
        (None, "u2", "Login", "i5", "{}", ts(1, 13), "u2"),
        ("", "u3", "Login", "i6", "{}", ts(1, 13), "u3"),
        ("d4", "", "Hot shard", "i7", "{}", ts(1, 14), ""),
    )
    out = edges_from_events(frame, "simplified")
    assert out.schema == EDGE_SCHEMA
    assert rows(out) == [
        ("device_user", "$device:d1", "u1", ts(1, 10), "i2"),
        ("device_user", "$device:d2", "u1", ts(1, 12), "i4"),
    ]


def test_original_edges_come_from_explicit_merge_events_only() -> None:
    frame = events(
        # Both ids on a plain event: a merge in Simplified ID Merge, nothing in Original.
        ("d1", "u1", "Login", "i0", "{}", ts(1, 8), "u1"),
        (None, "u1", "$identify", "i1", '{"$anon_id":"anon1","$identified_id":"u1"}', ts(1, 9), None),
        (None, "u2", "$create_alias", "i2", '{"alias":"al2","distinct_id":"u2"}', ts(1, 10), None),
        (None, "x", "$merge", "i3", '{"$distinct_ids":["x","y","z","y"]}', ts(1, 11), None),
        (None, "u3", "Page View", "i4", '{"$anon_id":"nope","$identified_id":"u3"}', ts(1, 12), None),
    )
    out = edges_from_events(frame, "original")
    assert out.schema == EDGE_SCHEMA
    assert rows(out) == [
        ("identify", "anon1", "u1", ts(1, 9), "i1"),
        ("alias", "al2", "u2", ts(1, 10), "i2"),
        ("merge", "x", "y", ts(1, 11), "i3"),
        ("merge", "x", "z", ts(1, 11), "i3"),
    ]


def test_legacy_edges_are_aliases_only() -> None:
    frame = events(
        ("d1", "u1", "Login", "i0", "{}", ts(1, 8), "u1"),
        (None, "u1", "$identify", "i1", '{"$anon_id":"anon1","$identified_id":"u1"}', ts(1, 9), None),
        (None, "u2", "$create_alias", "i2", '{"alias":"al2","distinct_id":"u2"}', ts(1, 10), None),
        (None, "x", "$merge", "i3", '{"$distinct_ids":["x","y"]}', ts(1, 11), None),
    )
    assert rows(edges_from_events(frame, "legacy")) == [("alias", "al2", "u2", ts(1, 10), "i2")]


def test_numeric_ids_keep_their_json_text() -> None:
    frame = events(
        (None, "u1", "$identify", "i1", '{"$anon_id": 12345, "$identified_id": "u1"}', ts(1, 1), None),
        (None, "42", "$create_alias", "i2", '{"alias":9007199254740993,"distinct_id":42}', ts(1, 2), None),
        (None, "1", "$merge", "i3", '{"$distinct_ids":[1,"x",2.50]}', ts(1, 3), None),
    )
    assert rows(edges_from_events(frame, "original")) == [
        ("identify", "12345", "u1", ts(1, 1), "i1"),
        ("alias", "9007199254740993", "42", ts(1, 2), "i2"),
        ("merge", "1", "x", ts(1, 3), "i3"),
        ("merge", "1", "2.50", ts(1, 3), "i3"),
    ]
    mapping = resolve(edges_from_events(frame, "original"), "original")
    assert rows(mapping) == [
        # {1, x, 2.50}: merge-only ids, smallest string wins.
        ("1", "1"),
        ("2.50", "1"),
        ("x", "1"),
        # {9007199254740993, 42}: the alias target is identified.
        ("42", "42"),
        ("9007199254740993", "42"),
        # {12345, u1}: not merged, a numeric $anon_id is not a UUID v4 (the edge stays a fact).
    ]


@pytest.mark.parametrize(
    ("name", "props"),
    [
        ("$identify", '{"$anon_id":null,"$identified_id":"u1"}'),
        ("$identify", '{"$anon_id":true,"$identified_id":"u1"}'),
        ("$identify", '{"$identified_id":"u1"}'),
        ("$identify", '{"$anon_id":"u1","$identified_id":"u1"}'),
        ("$identify", '{"$anon_id":"","$identified_id":"u1"}'),
        ("$identify", '{"$anon_id":{"a":1},"$identified_id":"u1"}'),
        ("$create_alias", '{"alias":"a1"}'),
        ("$create_alias", '{"alias":["a1"],"distinct_id":"u1"}'),
        ("$merge", '{"$distinct_ids":["a"]}'),
        ("$merge", '{"$distinct_ids":["a","a"]}'),
        ("$merge", '{"$distinct_ids":"a,b"}'),
        ("$merge", '{"$distinct_ids":["a",null]}'),
        ("$merge", '{"$distinct_ids":["a",{"b":1}]}'),
        ("$merge", "{"),
        ("$merge", "[1,2]"),
        ("$merge", None),
    ],
)
def test_missing_or_invalid_merge_properties_skip_the_row(name: str, props: str | None) -> None:
    frame = events((None, "u1", name, "i1", props, ts(1, 1), None))
    out = edges_from_events(frame, "original")
    assert out.schema == EDGE_SCHEMA
    assert out.height == 0


def test_edges_from_a_large_day_with_few_merge_events() -> None:
    n = 1_000_000
    frame = pl.DataFrame(
        {
            "device_id": pl.repeat(None, n, dtype=pl.String, eager=True),
            "distinct_id": "u" + pl.int_range(n, eager=True).cast(pl.String),
            "event_name": pl.repeat("Page View", n, eager=True),
            "insert_id": "i" + pl.int_range(n, eager=True).cast(pl.String),
            "properties": pl.repeat('{"$anon_id":"x","$identified_id":"y"}', n, eager=True),
            "time": pl.repeat(ts(1), n, dtype=pl.Datetime("us", "UTC"), eager=True),
            "user_id": pl.repeat(None, n, dtype=pl.String, eager=True),
        }
    ).select(EVENTS_SCHEMA.names())
    frame = frame.with_columns(
        pl.when(pl.int_range(n) == 777_777)
        .then(pl.lit("$identify"))
        .otherwise(pl.col("event_name"))
        .alias("event_name")
    )
    assert rows(edges_from_events(frame, "original")) == [("identify", "x", "y", ts(1), "i777777")]
    assert edges_from_events(frame, "simplified").height == 0


# --------------------------------------------------------------------------- simplified


def test_simplified_device_then_login() -> None:
    frame = events(
        ("d1", "$device:d1", "Page View", "i1", "{}", ts(1, 9), None),
        ("d1", "u1", "Login", "i2", "{}", ts(1, 10), "u1"),
    )
    mapping = resolve(edges_from_events(frame, "simplified"), "simplified")
    assert mapping.schema == MAPPINGS_FRAME_SCHEMA
    assert rows(mapping) == [("$device:d1", "u1"), ("u1", "u1")]


def test_simplified_one_user_on_many_devices() -> None:
    mapping = resolve(
        edges(
            du("d1", "u1", ts(1, 1)),
            du("d2", "u1", ts(1, 2)),
            du("d3", "u1", ts(2, 3)),
            du("d4", "u2", ts(2, 4)),
        ),
        "simplified",
    )
    assert rows(mapping) == [
        ("$device:d1", "u1"),
        ("$device:d2", "u1"),
        ("$device:d3", "u1"),
        ("u1", "u1"),
        ("$device:d4", "u2"),
        ("u2", "u2"),
    ]


def test_simplified_first_user_wins_and_users_never_merge() -> None:
    mapping = resolve(
        edges(
            du("d1", "u1", ts(1, 1)),
            du("d2", "u2", ts(1, 2)),
            # d1 later logs in as u2: d1 stays u1's, and u1 and u2 stay apart.
            du("d1", "u2", ts(1, 3)),
            du("d2", "u1", ts(1, 4)),
        ),
        "simplified",
    )
    assert rows(mapping) == [
        ("$device:d1", "u1"),
        ("u1", "u1"),
        ("$device:d2", "u2"),
        ("u2", "u2"),
    ]


def test_simplified_ignores_explicit_merge_edges() -> None:
    mapping = resolve(
        edges(("identify", "anon1", "u1", ts(1, 1)), du("d1", "u1", ts(1, 2))),
        "simplified",
    )
    assert rows(mapping) == [("$device:d1", "u1"), ("u1", "u1")]


def test_simplified_events_out_of_order_across_days() -> None:
    day1 = edges(du("d1", "u1", ts(1, 10)))
    day2 = edges(du("d1", "u2", ts(2, 9)), du("d2", "u2", ts(2, 10)))
    expected = [("$device:d1", "u1"), ("u1", "u1"), ("$device:d2", "u2"), ("u2", "u2")]
    assert rows(resolve(pl.concat([day1, day2]), "simplified")) == expected
    assert rows(resolve(pl.concat([day2, day1]), "simplified")) == expected


def test_simplified_out_of_order_rows_within_a_day() -> None:
    frame = events(
        ("d1", "u2", "Login", "i2", "{}", ts(1, 11), "u2"),
        ("d1", "u1", "Login", "i1", "{}", ts(1, 10), "u1"),
    )
    mapping = resolve(edges_from_events(frame, "simplified"), "simplified")
    assert rows(mapping) == [("$device:d1", "u1"), ("u1", "u1")]


def test_rerunning_a_day_whose_edges_changed() -> None:
    by_day = {
        1: edges(du("d1", "u1", ts(1, 10))),
        2: edges(du("d1", "u2", ts(2, 10)), du("d2", "u2", ts(2, 11))),
    }
    before = resolve(pl.concat(by_day.values()), "simplified")
    assert rows(before) == [("$device:d1", "u1"), ("u1", "u1"), ("$device:d2", "u2"), ("u2", "u2")]
    # Day 1 is re-exported and the d1/u1 login is gone (deleted upstream): d1 now goes to u2.
    by_day[1] = edges(du("d3", "u1", ts(1, 10)))
    after = resolve(pl.concat(by_day.values()), "simplified")
    assert rows(after) == [
        ("$device:d3", "u1"),
        ("u1", "u1"),
        ("$device:d1", "u2"),
        ("$device:d2", "u2"),
        ("u2", "u2"),
    ]


# --------------------------------------------------------------------------- original


def test_original_identify_then_alias_chain() -> None:
    mapping = resolve(
        edges(
            ("identify", "anon1", "u1", ts(1, 1)),
            ("alias", "a2", "anon1", ts(1, 2)),
            ("alias", "a3", "a2", ts(1, 3)),
        ),
        "original",
    )
    # u1 was identified first (anon1 and a2 became identified later, as alias targets).
    assert rows(mapping) == [("a2", "u1"), ("a3", "u1"), ("anon1", "u1"), ("u1", "u1")]


def test_original_alias_chain_canonical_is_the_first_alias_target() -> None:
    mapping = resolve(
        edges(
            ("alias", "a", "b", ts(1, 1)),
            ("alias", "b", "c", ts(1, 2)),
            ("alias", "x", "a", ts(1, 3)),
        ),
        "original",
    )
    assert rows(mapping) == [("a", "b"), ("b", "b"), ("c", "b"), ("x", "b")]


def test_original_merge_joins_two_clusters() -> None:
    mapping = resolve(
        edges(
            ("identify", "anon1", "u1", ts(1, 1)),
            ("identify", "anon2", "u2", ts(1, 2)),
            ("merge", "u2", "u1", ts(1, 3)),
        ),
        "original",
    )
    # u1 and u2 are both identified; u1 was identified first.
    assert rows(mapping) == [("anon1", "u1"), ("anon2", "u1"), ("u1", "u1"), ("u2", "u1")]


def test_original_identified_id_beats_merge_only_ids() -> None:
    mapping = resolve(
        edges(
            ("merge", "a0", "u5", ts(1, 1)),
            ("identify", "anon", "u5", ts(1, 2)),
        ),
        "original",
    )
    assert rows(mapping) == [("a0", "u5"), ("anon", "u5"), ("u5", "u5")]


def test_original_identify_ignored_when_anon_already_has_another_identified_id() -> None:
    mapping = resolve(
        edges(
            ("identify", "anon1", "u1", ts(1, 1)),
            ("identify", "anon1", "u2", ts(1, 2)),  # anon1 is already u1's: ignored
            ("identify", "u1", "u3", ts(1, 3)),  # u1 is itself identified: ignored
            ("identify", "anon2", "u2", ts(1, 4)),
            ("identify", "anon1", "u1", ts(1, 5)),  # same cluster: no-op
        ),
        "original",
    )
    assert rows(mapping) == [("anon1", "u1"), ("u1", "u1"), ("anon2", "u2"), ("u2", "u2")]


def test_original_merge_refused_at_a_small_cap() -> None:
    mapping = resolve(
        edges(
            ("identify", "a1", "u1", ts(1, 1)),
            ("identify", "a2", "u1", ts(1, 2)),
            ("identify", "a3", "u1", ts(1, 3)),  # would make 4 > 3: refused
            ("identify", "a4", "u2", ts(1, 4)),
            ("merge", "u1", "u2", ts(1, 5)),  # 3 + 2 > 3: refused
            # A $merge is all or nothing: x and y are not merged either (1 + 1 + 3 > 3).
            ("merge", "x", "y", ts(1, 6), "m1"),
            ("merge", "x", "u1", ts(1, 6), "m1"),
            ("alias", "a5", "u2", ts(1, 7)),  # 3 ids: allowed
            ("alias", "a6", "u2", ts(1, 8)),  # refused
        ),
        "original",
        max_cluster=3,
    )
    assert rows(mapping) == [
        ("a1", "u1"),
        ("a2", "u1"),
        ("u1", "u1"),
        ("a4", "u2"),
        ("a5", "u2"),
        ("u2", "u2"),
    ]


def test_original_cap_at_500() -> None:
    identifies = [("identify", f"anon{i:03d}", "u", ts(1, 1, 0), f"i{i:03d}") for i in range(500)]
    mapping = resolve(edges(*identifies), "original")
    # anon000..anon498 + u = 500 ids; anon499 would make 501.
    assert mapping.height == 500
    assert mapping["resolved_distinct_id"].unique().to_list() == ["u"]
    assert "anon498" in names(mapping["distinct_id"])
    assert "anon499" not in names(mapping["distinct_id"])


def test_original_alias_first_wins() -> None:
    mapping = resolve(
        edges(("alias", "a1", "u1", ts(1, 1)), ("alias", "a1", "u2", ts(1, 2))),
        "original",
    )
    assert rows(mapping) == [("a1", "u1"), ("u1", "u1")]


# --------------------------------------------------------------------------- legacy


def test_legacy_alias_first_wins() -> None:
    mapping = resolve(
        edges(("alias", "a1", "u1", ts(1, 1)), ("alias", "a1", "u2", ts(1, 2))),
        "legacy",
    )
    assert rows(mapping) == [("a1", "u1"), ("u1", "u1")]


def test_legacy_alias_chain_resolves_to_the_chain_root() -> None:
    mapping = resolve(
        edges(
            ("alias", "a", "b", ts(1, 1)),
            ("alias", "b", "c", ts(1, 2)),
            ("alias", "x", "a", ts(1, 3)),
            ("alias", "c", "a", ts(1, 4)),  # would close a cycle: ignored
            ("alias", "a", "z", ts(1, 5)),  # a already points to b: ignored
            ("identify", "anon", "c", ts(1, 6)),  # not a legacy merge
        ),
        "legacy",
    )
    assert rows(mapping) == [("a", "c"), ("b", "c"), ("c", "c"), ("x", "c")]


def test_legacy_chain_built_out_of_order() -> None:
    # b -> c arrives (by time) before a -> b; the root is still c.
    day2 = edges(("alias", "a", "b", ts(2, 1)))
    day1 = edges(("alias", "b", "c", ts(1, 1)))
    expected = [("a", "c"), ("b", "c"), ("c", "c")]
    assert rows(resolve(pl.concat([day2, day1]), "legacy")) == expected
    assert rows(resolve(pl.concat([day1, day2]), "legacy")) == expected


def test_legacy_chain_root_moves_when_the_root_is_aliased() -> None:
    mapping = resolve(
        edges(
            ("alias", "b", "c", ts(1, 1)),
            ("alias", "a", "b", ts(1, 2)),
            ("alias", "c", "d", ts(1, 3)),  # c was the root; now the chain ends at d
        ),
        "legacy",
    )
    assert rows(mapping) == [("a", "d"), ("b", "d"), ("c", "d"), ("d", "d")]


# --------------------------------------------------------------------------- determinism


def test_determinism_under_row_shuffles() -> None:
    original = edges(
        # Same time and kind: insert_id decides (i1 first), so anon1 goes to u2.
        ("identify", "anon1", "u1", ts(1, 1), "i2"),
        ("identify", "anon1", "u2", ts(1, 1), "i1"),
        # Same time, no insert_id: a then b decide, so z points to p.
        ("alias", "z", "q", ts(1, 2)),
        ("alias", "z", "p", ts(1, 2)),
        # Same time: identify sorts before merge.
        ("merge", "m1", "m2", ts(1, 3), "i9"),
        ("identify", "anon3", "m2", ts(1, 3), "i9"),
    )
    expected_original = [
        ("anon3", "m2"),
        ("m1", "m2"),
        ("m2", "m2"),
        ("p", "p"),
        ("z", "p"),
        ("anon1", "u2"),
        ("u2", "u2"),
    ]
    simplified = edges(du("d1", "u2", ts(1, 1)), du("d1", "u1", ts(1, 1)), du("d2", "u2", ts(1, 2)))
    expected_simplified = [("$device:d1", "u1"), ("u1", "u1"), ("$device:d2", "u2"), ("u2", "u2")]
    for seed in range(8):
        shuffled = original.sample(fraction=1.0, shuffle=True, seed=seed)
        assert rows(resolve(shuffled, "original")) == expected_original
        shuffled = simplified.sample(fraction=1.0, shuffle=True, seed=seed)
        assert rows(resolve(shuffled, "simplified")) == expected_simplified


def test_resolve_of_no_edges_is_empty() -> None:
    for mode in ("simplified", "original", "legacy"):
        out = resolve(edges(), mode)
        assert out.schema == MAPPINGS_FRAME_SCHEMA
        assert out.height == 0


def test_resolve_handles_200k_simplified_edges() -> None:
    n = 100_000
    ids = pl.int_range(n, eager=True).cast(pl.String)
    frame = pl.concat(
        [
            pl.DataFrame({"a": "$device:d" + ids + "a", "b": "u" + ids}),
            pl.DataFrame({"a": "$device:d" + ids + "b", "b": "u" + ids}),
        ]
    ).with_columns(
        pl.lit("device_user").alias("kind"),
        pl.lit(ts(1), dtype=pl.Datetime("us", "UTC")).alias("time"),
        pl.lit(None, dtype=pl.String).alias("insert_id"),
    )
    # A later day in which every "a" device logs in as the next user: all ignored.
    later = frame.head(n).with_columns(
        ("u" + pl.int_range(1, n + 1).cast(pl.String)).alias("b"),
        pl.lit(ts(2), dtype=pl.Datetime("us", "UTC")).alias("time"),
    )
    mapping = resolve(pl.concat([later, frame]).select(EDGE_SCHEMA.names()), "simplified")
    assert mapping.height == 3 * n
    assert mapping["resolved_distinct_id"].n_unique() == n
    lookup = dict(mapping.iter_rows())
    assert lookup["$device:d0a"] == "u0"
    assert lookup["$device:d0b"] == "u0"
    assert lookup["$device:d99999a"] == "u99999"
    assert lookup["u12345"] == "u12345"
    assert "u100000" not in lookup


# --------------------------------------------------------------------------- user counts


def test_user_counts_naive_vs_resolved_through_a_left_join() -> None:
    frame = events(
        ("d1", "$device:d1", "Page View", "i1", "{}", ts(1, 1), None),
        ("d1", "u1", "Login", "i2", "{}", ts(1, 2), "u1"),
        ("d1", "u1", "Page View", "i3", "{}", ts(1, 3), "u1"),
        ("d2", "$device:d2", "Page View", "i4", "{}", ts(1, 4), None),
        ("d3", "$device:d3", "Page View", "i5", "{}", ts(1, 5), None),
        ("d3", "u2", "Login", "i6", "{}", ts(1, 6), "u2"),
        ("d9", "$device:d9", "Page View", "i7", "{}", ts(1, 7), None),  # never merged
        (None, "", "Hot shard", "i8", "{}", ts(1, 8), None),
        (None, None, "No id", "i9", "{}", ts(1, 9), None),
    )
    mappings = pl.DataFrame(
        [
            ("$device:d1", "u1"),
            ("$device:d2", "u1"),
            ("u1", "u1"),
            ("$device:d3", "u2"),
            ("u2", "u2"),
        ],
        schema=MAPPINGS_FRAME_SCHEMA,
        orient="row",
    )
    # naive: $device:d1, u1, $device:d2, $device:d3, u2, $device:d9; resolved: u1, u2, $device:d9.
    assert user_counts(frame, mappings) == (6, 3)
    assert user_counts(frame, mappings.clear()) == (6, 6)


def test_user_counts_through_resolved_mappings_in_both_modes() -> None:
    simplified = events(
        ("d1", "$device:d1", "Page View", "i1", "{}", ts(1, 1), None),
        ("d1", "u1", "Login", "i2", "{}", ts(1, 2), "u1"),
        ("d2", "$device:d2", "Page View", "i3", "{}", ts(1, 3), None),
        ("d2", "u1", "Login", "i4", "{}", ts(2, 1), "u1"),  # the same user on a second device, next day
        ("d3", "$device:d3", "Page View", "i5", "{}", ts(2, 2), None),  # never logs in
    )
    mapping = resolve(edges_from_events(simplified, "simplified"), "simplified")
    assert rows(mapping) == [("$device:d1", "u1"), ("$device:d2", "u1"), ("u1", "u1")]
    # naive: $device:d1, u1, $device:d2, $device:d3; resolved: u1, $device:d3
    assert user_counts(simplified, mapping) == (4, 2)

    a1 = anon("anon1")  # $identify needs a UUID v4 anon id
    original = events(
        (None, a1, "Page View", "i1", "{}", ts(1, 1), None),
        (None, "u1", "$identify", "i2", f'{{"$anon_id":"{a1}","$identified_id":"u1"}}', ts(1, 2), None),
        (None, "u1", "Page View", "i3", "{}", ts(1, 3), None),
        (None, "anon2", "Page View", "i4", "{}", ts(1, 4), None),
        (None, "u2", "$create_alias", "i5", '{"alias":"anon2","distinct_id":"u2"}', ts(1, 5), None),
        (None, "anon3", "Page View", "i6", "{}", ts(1, 6), None),
        (None, "u1", "$merge", "i7", '{"$distinct_ids":["u1","anon3"]}', ts(2, 1), None),
        (None, "anon4", "Page View", "i8", "{}", ts(2, 2), None),  # never merged
    )
    mapping = resolve(edges_from_events(original, "original"), "original")
    assert rows(mapping) == [
        ("anon1", "u1"),
        ("anon3", "u1"),
        ("u1", "u1"),
        ("anon2", "u2"),
        ("u2", "u2"),
    ]
    # naive: anon1, u1, anon2, u2 (the alias event), anon3, anon4; resolved: u1, u2, anon4
    assert user_counts(original, mapping) == (6, 3)


# --------------------------------------------------------------------------- the UUID v4 rule of $identify

V4 = "3f2b8c1e-9d4a-4b6f-8e2d-1a2b3c4d5e6f"


@pytest.mark.parametrize(
    ("anon_id", "accepted"),
    [
        (V4, True),
        (V4.upper(), True),  # hex digits in either case (RFC 9562 text is case-insensitive)
        ("3F2B8C1E-9d4a-4B6F-8e2d-1A2B3C4D5E6F", True),
        (f"$device:{V4}", True),  # the SDKs' prefix is removed before the check
        (f"$device:{V4.upper()}", True),
        ("3f2b8c1e-9d4a-4b6f-9e2d-1a2b3c4d5e6f", True),
        ("3f2b8c1e-9d4a-4b6f-ae2d-1a2b3c4d5e6f", True),
        ("3f2b8c1e-9d4a-4b6f-be2d-1a2b3c4d5e6f", True),
        ("", False),  # empty
        (None, False),
        ("$device:", False),
        (f"{{{V4}}}", False),  # braces
        (f"urn:uuid:{V4}", False),
        (V4.replace("-", ""), False),  # 32 digits, no dashes
        (f" {V4}", False),
        (f"{V4}\n", False),
        (f"$device:$device:{V4}", False),  # one prefix only
        (f"$DEVICE:{V4}", False),
        ("c232ab00-9414-11ec-b3c8-9f6bdeced846", False),  # v1 (time-based)
        ("017f22e2-79b0-7cc3-98c4-dc0c0c07398f", False),  # v7
        ("886313e1-3b8a-5372-9b90-0c9aee199e5d", False),  # v5
        ("00000000-0000-0000-0000-000000000000", False),  # nil
        ("3f2b8c1e-9d4a-4b6f-4e2d-1a2b3c4d5e6f", False),  # v4 nibble, wrong variant (0xxx)
        ("3f2b8c1e-9d4a-4b6f-ce2d-1a2b3c4d5e6f", False),  # wrong variant (110x, Microsoft)
        ("3f2b8c1e-9d4a-4b6f-8e2d-1a2b3c4d5e6", False),  # one digit short
        ("3g2b8c1e-9d4a-4b6f-8e2d-1a2b3c4d5e6f", False),  # not hex
        ("anon-eb8ea9c7802d", False),  # the kind of id an independent imitation used
        ("18c2d1b0a7e5b-0b2c9f4b7c7e4-26001951-1fa400-18c2d1b0a7e5b", False),  # old mixpanel-js device id
        ("12345", False),
    ],
)
def test_identify_anon_id_must_be_a_uuid_v4(anon_id: str | None, accepted: bool) -> None:
    assert is_uuid4(anon_id) is accepted
    # and resolve applies the same rule: the anon id joins the user only when accepted
    if anon_id:
        mapping = resolve(edges(("identify", anon_id, "u1", ts(1, 1))), "original")
        assert rows(mapping) == ([(anon_id, "u1"), ("u1", "u1")] if accepted else [])


def test_refused_identify_merges_nothing_but_alias_and_merge_take_any_id() -> None:
    mapping = resolve(
        edges(
            ("identify", "anon-1", "u1", ts(1, 1)),  # refused: not a UUID
            ("identify", "anon-1", "u2", ts(1, 2)),  # refused too: it does not count as u1's
            ("alias", "anon-2", "u2", ts(1, 3)),  # $create_alias: any id (Create Alias has no UUID rule)
            ("merge", "anon-3", "u3", ts(1, 4)),  # $merge: any ids
            ("identify", "anon1", "u3", ts(1, 5)),  # a UUID v4: accepted
        ),
        "original",
    )
    assert rows(mapping) == [("anon-2", "u2"), ("u2", "u2"), ("anon-3", "u3"), ("anon1", "u3"), ("u3", "u3")]
    # edges are facts: the refused $identify is still an edge, the rule applies when resolving
    frame = events(
        (None, "u1", "$identify", "i1", '{"$anon_id":"anon-1","$identified_id":"u1"}', ts(1), None)
    )
    assert rows(edges_from_events(frame, "original")) == [("identify", "anon-1", "u1", ts(1), "i1")]
    # the legacy and simplified modes have no $identify
    assert rows(resolve(edges(("identify", "anon1", "u1", ts(1, 1))), "legacy")) == []
