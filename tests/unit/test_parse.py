"""The JSON-lines decoder: exact properties, lifted columns, and Mixpanel's broken-body quirks."""

from __future__ import annotations

import json
import time

import pytest

from tasks.errors import NotJsonLinesError, TruncatedStreamError
from tasks.pipeline.parse import StreamParser, row_hash

TRICKY_PROPS = (
    b'{"time":1700000000,"distinct_id":"u1","z":1,"a":2,"big":123456789012345678901234567890,'
    b'"neg":-36893488147419103232,"f":1.0000000000000002,"tiny":1e-07,"max":1.7976931348623157e308,'
    b'"esc":"caf\\u00e9 \\ud83d\\ude00","raw":"Z\xc3\xbcrich \xe6\x9d\xb1\xe4\xba\xac","n":null,'
    b'"nested":{"a":[1,{"b":[true,false,null]}]},"s":"42"}'
)


def parse(body: bytes, block_bytes: int = 1 << 20, piece: int = 4096) -> tuple[list[dict], list]:
    parser = StreamParser(block_bytes=block_bytes)
    rows, rejects = [], []
    blocks = []
    for i in range(0, len(body), piece):
        blocks += list(parser.feed(body[i : i + piece]))
    blocks += list(parser.finish())
    for block in blocks:
        rows += block.frame.to_dicts()
        rejects += block.rejects
    return rows, rejects


def line(name: str, props: bytes) -> bytes:
    return b'{"event":' + json.dumps(name).encode() + b',"properties":' + props + b"}"


def test_properties_are_byte_identical_to_the_source_object() -> None:
    rows, rejects = parse(line("Page View", TRICKY_PROPS) + b"\n")
    assert rejects == []
    assert rows[0]["properties"].encode() == TRICKY_PROPS
    assert json.loads(rows[0]["properties"])["big"] == 123456789012345678901234567890
    assert rows[0]["_hash"] == row_hash("Page View", TRICKY_PROPS)


def test_lifted_columns_come_from_the_mixpanel_keys_and_missing_keys_are_null() -> None:
    props = b'{"time":5,"distinct_id":12345,"$insert_id":"i1","$device_id":"d1","$user_id":"u1","mp_processing_time_ms":7}'
    rows, _ = parse(line("Sign Up", props) + b"\n" + line("Bare", b'{"time":6}') + b"\n")
    assert rows[0] | {"properties": None, "_hash": None} == {
        "device_id": "d1",
        "distinct_id": "12345",
        "event_name": "Sign Up",
        "insert_id": "i1",
        "properties": None,
        "user_id": "u1",
        "_epoch": 5,
        "_ptime": 7,
        "_hash": None,
    }
    assert [rows[1][k] for k in ("device_id", "distinct_id", "insert_id", "user_id", "_ptime")] == [None] * 5


@pytest.mark.parametrize("block_bytes", [16, 1 << 20])
def test_a_record_split_across_two_lines_is_rejoined(block_bytes: int) -> None:
    body = line("a", b'{"time":1,\n"distinct_id":"x"}') + b"\n" + line("b", b'{"time":2}') + b"\n"
    rows, rejects = parse(body, block_bytes=block_bytes, piece=7)
    assert rejects == []
    assert [(r["event_name"], r["distinct_id"]) for r in rows] == [("a", "x"), ("b", None)]
    assert rows[0]["properties"] == '{"time":1,"distinct_id":"x"}'


def test_a_record_split_inside_a_string_is_rejoined_exactly() -> None:
    body = line("a", b'{"time":1,"city":"S\xc3\xa3o \nPaulo"}') + b"\n" + line("b", b'{"time":2}') + b"\n"
    rows, rejects = parse(body)
    assert rejects == []
    assert rows[0]["properties"] == '{"time":1,"city":"São Paulo"}'


@pytest.mark.parametrize("block_bytes", [16, 1 << 20])
def test_a_malformed_line_is_set_aside_with_its_line_number(block_bytes: int) -> None:
    good = line("ok", b'{"time":1}')
    body = b"\n".join([good, good, b'{"event": "broken", "properties": {', good, good]) + b"\n"
    rows, rejects = parse(body, block_bytes=block_bytes, piece=5)
    assert len(rows) == 4
    assert [r.line for r in rejects] == [3]
    assert "invalid JSON" in rejects[0].error


@pytest.mark.parametrize("filler", [b"", b"x" * 3000], ids=["short-lines", "long-lines-first"])
def test_line_numbers_hold_after_runs_of_blank_lines(filler: bytes) -> None:
    """Blocks of long lines, of blank lines, and of long lines then blank ones count their newlines
    differently (tasks.pipeline.parse._newlines): the reject after them keeps its number."""
    good = line("ok", b'{"time":1,"pad":"' + filler + b'"}')
    lines = [good] * 40 + [b""] * 5000 + [good] * 100 + [b'{"event": "broken", "properties": {', good]
    rows, rejects = parse(b"\n".join(lines) + b"\n", block_bytes=128 << 10, piece=8192)
    assert len(rows) == 141
    assert [r.line for r in rejects] == [5141]


def test_records_without_time_or_with_bad_utf8_are_rejected() -> None:
    body = line("a", b'{"distinct_id":"x"}') + b"\n" + line("b", b'{"time":1,"s":"\xff"}') + b"\n"
    rows, rejects = parse(body)
    assert rows == []
    assert [(r.line, r.error.split(":")[0]) for r in rejects] == [
        (1, "the record has no properties.time"),
        (2, "invalid properties"),
    ]


@pytest.mark.parametrize(
    "tail", [b"export terminated early\n", b"[terminated early]\n", b'{"event":"x","properties":{"ti']
)
def test_a_body_cut_short_is_a_retriable_error(tail: bytes) -> None:
    with pytest.raises(TruncatedStreamError, match="cut the export short at line 2"):
        parse(line("a", b'{"time":1}') + b"\n" + tail)


def test_a_property_value_mentioning_terminated_early_is_just_data() -> None:
    rows, rejects = parse(line("a", b'{"time":1,"msg":"export terminated early"}') + b"\n")
    assert len(rows) == 1 and rejects == []


def test_a_last_line_without_newline_is_accepted_when_complete() -> None:
    rows, _ = parse(line("a", b'{"time":1}') + b"\n" + line("b", b'{"time":2}'))
    assert [r["event_name"] for r in rows] == ["a", "b"]


def test_lenient_values_float_time_and_numeric_strings() -> None:
    rows, rejects = parse(line("a", b'{"time":1.9,"$user_id":7,"mp_processing_time_ms":"12"}') + b"\n")
    assert rejects == []
    assert (rows[0]["_epoch"], rows[0]["user_id"], rows[0]["_ptime"]) == (1, "7", 12)


def feed_in_pieces(parser: StreamParser, body_parts: list[bytes], piece: int) -> tuple[list, int]:
    """Blocks out, and the most bytes the parser held at once."""
    blocks, held = [], 0
    for part in body_parts:
        for i in range(0, len(part), piece):
            blocks += list(parser.feed(part[i : i + piece]))
            held = max(held, parser._size)
    return blocks + list(parser.finish()), held


def test_a_long_line_is_parsed_in_linear_time() -> None:
    # 16 MiB in 16 KiB pieces: the old feed re-joined every buffered piece on each new one (8 GiB copied)
    big = line("Big", b'{"time":1,"pad":"' + b"a" * (16 << 20) + b'"}') + b"\n"
    parser = StreamParser(block_bytes=64 << 10, max_line_bytes=32 << 20)
    started = time.thread_time()  # CPU, not wall: a busy machine does not make the copying slower
    blocks, _ = feed_in_pieces(parser, [big, line("Small", b'{"time":2}') + b"\n"], 16 << 10)
    assert time.thread_time() - started < 1.5
    assert sum(b.frame.height for b in blocks) == 2


def test_a_line_over_the_cap_is_rejected_with_its_number_in_bounded_memory() -> None:
    cap = 1 << 20
    body = [
        line("A", b'{"time":1}') + b"\n",
        line("Huge", b'{"time":2,"pad":"' + b"x" * (16 << 20) + b'"}') + b"\n",
        line("B", b'{"time":3}') + b"\n",
    ]
    parser = StreamParser(block_bytes=64 << 10, max_line_bytes=cap)
    blocks, held = feed_in_pieces(parser, body, 64 << 10)
    assert held <= cap + (64 << 10)
    assert [r for b in blocks for r in b.frame["event_name"].to_list()] == ["A", "B"]
    (reject,) = [r for b in blocks for r in b.rejects]
    assert reject.line == 2 and "longer than max_line_bytes (1,048,576 bytes)" in reject.error
    assert reject.text.startswith('{"event":"Huge"') and len(reject.text) <= 2000


def test_a_line_over_the_cap_inside_one_chunk_is_rejected_too() -> None:
    body = line("A", b'{"time":1}') + b"\n" + line("Huge", b'{"time":2,"pad":"' + b"x" * 3000 + b'"}') + b"\n"
    parser = StreamParser(max_line_bytes=1000)
    blocks = list(parser.feed(body)) + list(parser.finish())
    assert [r.line for b in blocks for r in b.rejects] == [2]
    assert sum(b.frame.height for b in blocks) == 1


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (
            b'{"event":"x","properties":{"time":1,"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
            "nested too deeply",
        ),
        (b'{"event":"bad\xff","properties":{"time":1}}', "invalid UTF-8"),
        (b'{"event":"x","properties":{"time":1,"v":"\xc3("}}', "invalid"),
        (b'{"event":"x","properties":{"time":1,"v":NaN}}', "invalid JSON"),
        (b'{"event":"x","properties":{"time":1e999}}', "invalid"),
    ],
    ids=["deep nesting", "bad utf-8 name", "bad utf-8 value", "NaN", "huge time"],
)
def test_every_decoder_failure_is_a_rejected_line(bad: bytes, why: str) -> None:
    rows, rejects = parse(line("ok", b'{"time":1}') + b"\n" + bad + b"\n" + line("ok", b'{"time":2}') + b"\n")
    assert len(rows) == 2
    (reject,) = rejects
    assert reject.line == 2 and why in reject.error


def test_a_body_that_is_not_json_lines_is_retriable_and_quoted_without_secrets() -> None:
    parser = StreamParser()
    body = b"\n  <html><body>Bad gateway for ?token=abcdef123&x=1 Authorization: Bearer eyJabc</body></html>"
    with pytest.raises(NotJsonLinesError) as info:
        list(parser.feed(body))
    assert "<html><body>Bad gateway" in str(info.value)
    assert "abcdef123" not in str(info.value) and "eyJabc" not in str(info.value)


def test_duplicate_lifted_keys_take_the_first_occurrence() -> None:
    props = b'{"time":1,"distinct_id":"victim","$user_id":"u1","distinct_id":"other","$user_id":"u2"}'
    for block_bytes in (1 << 20, 16):
        rows, rejects = parse(
            line("x", props) + b"\n" + line("y", b'{"time":2,"distinct_id":"plain"}') + b"\n", block_bytes
        )
        assert rejects == []
        assert [(r["distinct_id"], r["user_id"]) for r in rows] == [("victim", "u1"), ("plain", None)]


def test_clean_blocks_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path swallows any error and re-reads the block line by line: a bug in it would only
    show as a slow pipeline, so a clean body (hot-shard rows and null ids included) must never fall back."""

    def no_slow_path(*args: object) -> None:
        raise AssertionError("a clean block was re-read line by line")

    monkeypatch.setattr(StreamParser, "_slow", no_slow_path)
    body = b"".join(
        line(name, props) + b"\n"
        for name, props in [
            ("A", TRICKY_PROPS),
            (
                "$hotshard_events",
                b'{"time":2,"distinct_id":"","mp_original_distinct_id":"u9","$device_id":null}',
            ),
            ("B", b'{"time":3,"distinct_id":"u1","$user_id":"u1","$insert_id":"i"}'),
        ]
    )
    rows, rejects = parse(body)
    assert len(rows) == 3 and rejects == []
