"""Property-based checks of the JSON-lines decoder (hypothesis): how the body is cut into chunks never
changes the rows, and a body cut short is always detected."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.errors import TruncatedStreamError
from tasks.lake.manifest import fingerprint_hex
from tasks.pipeline.parse import StreamParser

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
LIFTED = {"time", "distinct_id", "$insert_id", "$device_id", "$user_id", "mp_processing_time_ms"}
RECORDS = st.lists(
    st.tuples(
        st.text(min_size=0, max_size=10),  # event name
        st.integers(min_value=0, max_value=2**40),  # time
        st.one_of(st.none(), st.text(max_size=8), st.integers(min_value=0, max_value=10**6)),  # distinct_id
        st.dictionaries(st.text(max_size=6).filter(lambda k: k not in LIFTED), JSON_VALUES, max_size=4),
        st.booleans(),  # ensure_ascii
    ),
    min_size=1,
    max_size=25,
)


def export_body(records: list) -> tuple[bytes, list[int]]:
    """The body and the offset where each line ends (just after its newline)."""
    lines, ends, size = [], [], 0
    for name, time, distinct_id, extra, ascii_only in records:
        props = {"time": time, **({"distinct_id": distinct_id} if distinct_id is not None else {}), **extra}
        text = json.dumps(
            {"event": name, "properties": props}, separators=(",", ":"), ensure_ascii=ascii_only
        )
        line = text.encode() + b"\n"
        lines.append(line)
        size += len(line)
        ends.append(size)
    return b"".join(lines), ends


def parse(chunks: list[bytes], block_bytes: int) -> tuple[list[tuple], str]:
    parser = StreamParser(block_bytes=block_bytes)
    blocks = [b for chunk in chunks for b in parser.feed(chunk)] + list(parser.finish())
    rows = []
    total = 0
    for block in blocks:
        assert block.rejects == []
        rows += block.frame.drop("_hash").rows()
        total += sum(block.frame["_hash"].to_list())
    return rows, fingerprint_hex(total)


def cut(body: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(p % (len(body) + 1) for p in points)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=RECORDS, points=st.lists(st.integers(min_value=0), max_size=30), block=st.integers(16, 4096))
def test_any_split_into_chunks_gives_the_rows_and_fingerprint_of_one_chunk(
    records: list, points: list[int], block: int
) -> None:
    body, _ = export_body(records)
    whole = parse([body], 8 << 20)
    assert len(whole[0]) == len(records)
    assert parse(cut(body, points), block) == whole


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=RECORDS, where=st.floats(0, 1), points=st.lists(st.integers(min_value=0), max_size=10))
def test_any_truncation_is_retriable_unless_it_falls_between_records(
    records: list, where: float, points: list[int]
) -> None:
    body, ends = export_body(records)
    length = min(int(where * len(body)), len(body) - 1)
    short = body[:length]
    complete = [i for i, end in enumerate(ends) if end <= length or end - 1 == length]
    boundary = length == 0 or length in ends or length + 1 in ends
    if boundary:
        # a cut exactly between records cannot be seen in the body: the rows are exactly the whole
        # records before it (the shrink guard and the count check catch a day that lost records)
        rows, _ = parse(cut(short, points), 64)
        assert len(rows) == len(complete)
        return
    with pytest.raises(TruncatedStreamError):
        parse(cut(short, points), 64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=RECORDS,
    points=st.lists(st.integers(min_value=0), max_size=30),
    block=st.integers(16, 4096),
    cap=st.integers(40, 400),
)
def test_with_any_line_cap_and_chunking_exactly_the_longer_lines_are_rejected(
    records: list, points: list[int], block: int, cap: int
) -> None:
    body, ends = export_body(records)
    lengths = [end - start - 1 for start, end in zip([0, *ends], ends, strict=False)]
    parser = StreamParser(block_bytes=block, max_line_bytes=cap)
    blocks = [b for chunk in cut(body, points) for b in parser.feed(chunk)] + list(parser.finish())
    kept = sum(b.frame.height for b in blocks)
    rejected = [r.line for b in blocks for r in b.rejects]
    assert rejected == [i + 1 for i, n in enumerate(lengths) if n > cap]
    assert kept == sum(1 for n in lengths if n <= cap)
    assert all("longer than max_line_bytes" in r.error for b in blocks for r in b.rejects)
