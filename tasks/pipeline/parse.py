"""Decode Mixpanel's JSON-lines export into polars frames in the events schema.

Hot path: msgspec decodes a newline-cut block of lines twice, once keeping each ``properties``
object as raw bytes (``msgspec.Raw``: byte-identical, so big integers, float digits, unicode
escapes and key order survive untouched) and once lifting the few columns we expose. Both passes
run in C; Python only touches column lists. A block that does not decode cleanly is re-read line
by line, so one bad record costs one slow block, not a slow stream.

Mixpanel quirks handled here: a record split across two physical lines is re-joined; a line
containing ``terminated early`` or an unterminated last line means the body was cut short
(retriable); ids may arrive as numbers.

Hostile bodies: a body whose first non-blank byte is not ``{`` (a proxy's HTML page served with 200)
is a retriable ``NotJsonLinesError`` quoting its first bytes (credentials redacted). A line longer
than ``max_line_bytes`` (default 16 MiB; Mixpanel itself refuses events above 1 MB at ingestion) is a
rejected line with its number: its bytes are skipped as they arrive, so time stays linear and memory
bounded by the cap. Any decoder failure (invalid JSON, NaN, invalid UTF-8, nesting too deep for the
decoder, ...) is a rejected line with its number, never a bare exception.

Duplicate keys: when ``properties`` names one of the lifted keys twice, however spelled (spaces
around the colon, ``\\u`` escapes in the name), the lifted column takes the **first** occurrence,
which is what DuckDB answers for ``properties->>'$.key'`` (other engines differ: Snowflake's
PARSE_JSON refuses duplicates); the GDPR purge matches a row under every
occurrence (``tasks.pipeline.exclude``).
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, cast

import msgspec
import polars as pl
import pyarrow as pa
import xxhash

from tasks.errors import NotJsonLinesError, TruncatedStreamError, redact
from tasks.mixpanel.settings import Tuning

BLOCK_BYTES = 8 << 20
# a line above this many bytes is rejected (Mixpanel refuses events above 1 MB at ingestion)
MAX_LINE_BYTES = Tuning.max_line_bytes  # the default of the block's tuning
MAX_REJECT_TEXT = 2000
OPEN_BRACE = ord("{")  # a JSON object's first byte
QUOTED_BYTES = 120
# the lifted keys as member names of a JSON object: a row where they occur more often than lifted
# values were found may hold a duplicate key, and is re-read with the first-wins rule (the quote is
# left off the $-keys: the regex runs several times faster when few of its literals open with a
# quote, and "…$user_id": in another key only sends its row to the exact path)
LIFTED_KEYS = r'(?:"time|"distinct_id|\$insert_id|\$device_id|\$user_id|"mp_processing_time_ms)"\s*:'
# an escape of a character of the lifted keys' names (``$``, ``_``, a to z): it may spell a lifted key
# the regex above cannot see, so its row is re-read (encoders never escape these characters, so
# ordinary escapes, of non-ASCII text or quotes, do not leave the fast path)
ESCAPED_KEY = r"\\u00(?:24|5[fF]|6[1-9a-fA-F]|7[0-9aA])"
LIFTED_COLUMNS = ("_epoch", "distinct_id", "insert_id", "device_id", "user_id", "_ptime")
ID_COLUMNS = ("device_id", "distinct_id", "insert_id", "user_id")


class RawEvent(msgspec.Struct, gc=False):
    event: str
    properties: msgspec.Raw


class Lifted(msgspec.Struct, gc=False):
    time: int | None = None
    distinct_id: str | int | None = None
    insert_id: str | None = msgspec.field(default=None, name="$insert_id")
    device_id: str | int | None = msgspec.field(default=None, name="$device_id")
    user_id: str | int | None = msgspec.field(default=None, name="$user_id")
    mp_processing_time_ms: int | None = None


class LiftedEvent(msgspec.Struct, gc=False):
    properties: Lifted


class LenientLifted(msgspec.Struct, gc=False):
    """Slow-path view: any JSON value is accepted and coerced (or the record rejected)."""

    time: Any = None
    distinct_id: Any = None
    insert_id: Any = msgspec.field(default=None, name="$insert_id")
    device_id: Any = msgspec.field(default=None, name="$device_id")
    user_id: Any = msgspec.field(default=None, name="$user_id")
    mp_processing_time_ms: Any = None


RAW_DECODER = msgspec.json.Decoder(RawEvent)
LIFT_DECODER = msgspec.json.Decoder(LiftedEvent)
LENIENT_DECODER = msgspec.json.Decoder(LenientLifted)


@dataclass(frozen=True)
class Reject:
    """A line we could not turn into a row: its 1-based line number in the response body."""

    line: int
    error: str
    text: str


@dataclass
class ParsedBlock:
    frame: pl.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    rejoined: int = 0


class RecordError(ValueError):
    """A single record is unusable; the message says why."""


Buffer = bytes | memoryview | msgspec.Raw


def row_hash(event_name: str, properties: Buffer) -> int:
    """One row's share of a partition fingerprint (see ``tasks.lake.manifest``)."""
    return xxhash.xxh3_64_intdigest(properties, seed=xxhash.xxh3_64_intdigest(event_name.encode()))


def _row_hashes(names: list[str], raws: list[Buffer]) -> list[int]:
    # the event name enters as the seed: one call per row and no copy of the properties
    seeds = {name: xxhash.xxh3_64_intdigest(name.encode()) for name in set(names)}
    digest = xxhash.xxh3_64_intdigest
    return [digest(r, seeds[n]) for n, r in zip(names, raws, strict=True)]  # a keyword costs a third more


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def _string_series(name: str, values: list[Any]) -> pl.Series:
    try:
        return pl.Series(name, values, dtype=pl.String)
    except (TypeError, pl.exceptions.PolarsError):
        # Mixpanel accepts numeric ids (distinct_id: 12345); the schema says STRING.
        return pl.Series(name, [_text(v) for v in values], dtype=pl.String)


def _properties_series(raws: list[Buffer]) -> pl.Series:
    offsets = array("q", accumulate(map(len, raws), initial=0))
    data = b"".join(raws)
    binary = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(raws), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    # polars' cast checks the UTF-8 that msgspec did not (it skips the strings it keeps raw) and raises
    # on invalid bytes: at a third of the cost of pyarrow's check and conversion of a string array
    return pl.Series("properties", pl.from_arrow(binary)).cast(pl.String)


def build_frame(
    names: list[str], raws: list[Buffer], lifted: list[tuple[Any, ...]] | list[Lifted]
) -> pl.DataFrame:
    """Columns of the events schema plus helpers: ``_epoch`` (exported time, seconds), ``_ptime``
    (mp_processing_time_ms) and ``_hash`` (row fingerprint share)."""
    cols: dict[str, list[Any]]
    if lifted and isinstance(lifted[0], Lifted):
        cols = {
            "device_id": [p.device_id for p in lifted],
            "distinct_id": [p.distinct_id for p in lifted],
            "insert_id": [p.insert_id for p in lifted],
            "user_id": [p.user_id for p in lifted],
            "time": [p.time for p in lifted],
            "ptime": [p.mp_processing_time_ms for p in lifted],
        }
    else:
        rows = cast("list[tuple[Any, ...]]", lifted)  # one decoder made them all: tuples, as the first is
        keys = ("time", "distinct_id", "insert_id", "device_id", "user_id", "ptime")
        cols = {k: [row[i] for row in rows] for i, k in enumerate(keys)}
    hashes = _row_hashes(names, raws)
    return pl.DataFrame(
        [
            _string_series("device_id", cols["device_id"]),
            _string_series("distinct_id", cols["distinct_id"]),
            pl.Series("event_name", names, dtype=pl.String),
            _string_series("insert_id", cols["insert_id"]),
            _properties_series(raws),
            _string_series("user_id", cols["user_id"]),
            pl.Series("_epoch", cols["time"], dtype=pl.Int64),
            pl.Series("_ptime", cols["ptime"], dtype=pl.Int64),
            pl.Series("_hash", hashes, dtype=pl.UInt64),
        ]
    )


def _coerce_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordError(f"{what} is a boolean, not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value // 1)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            pass
    raise RecordError(f"{what} is not a number: {str(value)[:40]!r}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to decode"
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {exc.start}"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def decode_record(line: bytes | memoryview) -> tuple[str, memoryview, tuple[Any, ...]]:
    """Slow path for one record; raises ``RecordError`` with the reason when it is unusable.

    Every decoder failure (msgspec, invalid UTF-8, recursion depth, numbers out of range) becomes a
    ``RecordError``: one bad line never escapes as a bare exception."""
    try:
        raw = RAW_DECODER.decode(line)
    except Exception as exc:
        raise RecordError(f"invalid JSON record: {_why(exc)}") from exc
    props = memoryview(raw.properties)
    if not props or props[0] != OPEN_BRACE:
        raise RecordError("properties is not a JSON object")
    try:
        bytes(props).decode("utf-8")
        lifted = LENIENT_DECODER.decode(props)
        values = _lift_first(props, lifted)
    except RecordError:
        raise
    except Exception as exc:
        raise RecordError(f"invalid properties: {_why(exc)}") from exc
    return raw.event, props, values


def _lift_first(props: Buffer, lifted: LenientLifted) -> tuple[Any, ...]:
    """(epoch, distinct_id, insert_id, device_id, user_id, ptime), the first of duplicate keys winning."""
    text = bytes(props)
    if re.search(ESCAPED_KEY.encode(), text) or len(re.findall(LIFTED_KEYS.encode(), text)) > sum(
        v is not None for v in msgspec.structs.astuple(lifted)
    ):
        first = _first_values(text)
        lifted = LenientLifted(*(first.get(k) for k in _LIFTED_NAMES))
    epoch = _coerce_int(lifted.time, "properties.time")
    if epoch is None:
        raise RecordError("the record has no properties.time")
    ids = (_text(lifted.distinct_id), _text(lifted.insert_id), _text(lifted.device_id), _text(lifted.user_id))
    ptime = _coerce_int(lifted.mp_processing_time_ms, "mp_processing_time_ms")
    return (epoch, *ids, ptime)


_LIFTED_NAMES = ("time", "distinct_id", "$insert_id", "$device_id", "$user_id", "mp_processing_time_ms")


def _first_values(text: bytes) -> dict[str, Any]:
    """The top-level members of a JSON object, the first of duplicate keys winning."""
    pairs: list[tuple[str, Any]] = []

    def keep(members: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return members

    top = json.loads(text, object_pairs_hook=keep)
    pairs = top if isinstance(top, list) else []
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _truncated(line_no: int, line: bytes) -> TruncatedStreamError:
    return TruncatedStreamError(
        f"Mixpanel cut the export short at line {line_no} ({line[:60].decode('utf-8', 'replace')!r}); "
        "retrying the whole unit."
    )


class StreamParser:
    """Feed response bytes in, get ``ParsedBlock`` s out; memory is bounded by ``block_bytes`` plus
    ``max_line_bytes``, and time is linear in the body's length whatever its line lengths."""

    def __init__(self, block_bytes: int = BLOCK_BYTES, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.block_bytes = block_bytes
        self.max_line_bytes = max_line_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._tail = 0  # bytes held after the last newline: the line being received
        self._next_line = 1
        self._carry: tuple[int, bytes] | None = None
        self._skipping: tuple[int, bytes] | None = None  # an over-long line: its number and first bytes
        self._started = False
        self.lines = 0

    def feed(self, data: bytes) -> Iterator[ParsedBlock]:
        if not data:
            return
        if not self._started:
            self._check_start(data)
        if self._skipping is not None:
            end = data.find(b"\n")
            if end < 0:
                return  # still inside the over-long line: its bytes are dropped as they come
            yield self._end_skip()
            data = data[end + 1 :]
            if not data:
                return
        self._parts.append(data)
        self._size += len(data)
        last = data.rfind(b"\n")
        if last < 0:
            self._tail += len(data)  # no newline: nothing to decode yet, and no re-join either
        else:
            self._tail = len(data) - last - 1
        if self._tail > self.max_line_bytes:
            yield from self._start_skip()
            return
        if last < 0 or self._size < self.block_bytes:
            return
        buf = b"".join(self._parts)
        cut = len(buf) - self._tail
        self._parts = [buf[cut:]] if self._tail else []
        self._size = self._tail
        yield from self._block(buf, cut, final=False)

    def finish(self) -> Iterator[ParsedBlock]:
        if self._skipping is not None:
            yield self._end_skip()  # the body ended inside an over-long line: it is rejected all the same
        buf = b"".join(self._parts)
        self._parts, self._size, self._tail = [], 0, 0
        cut = buf.rfind(b"\n") + 1
        tail = buf[cut:]
        yield from self._block(buf, cut, final=not tail.strip())
        if tail.strip():
            try:
                name, props, values = decode_record(tail)
            except RecordError:
                raise _truncated(self._next_line, tail) from None
            self.lines += 1
            yield ParsedBlock(build_frame([name], [props], [values]))

    def _check_start(self, data: bytes) -> None:
        """The first non-blank byte of an export is ``{``: anything else is not JSON lines."""
        head = data.lstrip()[:QUOTED_BYTES]
        if not head:
            return
        self._started = True
        if head[:1] == b"{":
            return
        if b"terminated early" in head:
            raise _truncated(self._next_line, head)
        quoted = redact(head.decode("utf-8", "replace"))
        raise NotJsonLinesError(
            f"Mixpanel answered 200 with a body that is not JSON lines (it begins {quoted!r}): "
            "a proxy or gateway page, retrying."
        )

    def _start_skip(self) -> Iterator[ParsedBlock]:
        """The line being received passed ``max_line_bytes``: decode the whole lines before it, keep
        its first bytes for the rejects file and drop the rest of it until its newline."""
        buf = b"".join(self._parts)
        cut = len(buf) - self._tail
        head = buf[cut : cut + MAX_REJECT_TEXT]
        self._parts, self._size, self._tail = [], 0, 0
        yield from self._block(buf, cut, final=True)
        del buf
        if self._carry is not None:  # a record split before an over-long line has no second half
            line_no, line = self._carry
            self._carry = None
            yield ParsedBlock(_empty_frame(), [_reject(line_no, "invalid JSON record", line)])
        self._skipping = (self._next_line, head)

    def _end_skip(self) -> ParsedBlock:
        assert self._skipping is not None
        line_no, head = self._skipping
        self._skipping = None
        self._next_line += 1
        self.lines += 1
        why = f"the line is longer than max_line_bytes ({self.max_line_bytes:,} bytes)"
        return ParsedBlock(_empty_frame(), [_reject(line_no, why, head)])

    def _block(self, data: bytes, end: int, final: bool) -> Iterator[ParsedBlock]:
        """Decode ``data[:end]``, which holds whole lines only."""
        first = self._next_line
        count = _newlines(data, end)
        self._next_line += count
        self.lines += count
        if not end:
            return
        view = memoryview(data)[:end]
        if self._carry is None:
            try:
                yield self._fast(view, count)
                return
            except Exception:
                pass
        yield self._slow(bytes(view), first, final)

    def _fast(self, buf: memoryview, lines: int) -> ParsedBlock:
        # Raw objects are not tracked by the garbage collector (memoryviews are): a million of
        # them alive at once would trigger collection after collection.
        raws = RAW_DECODER.decode_lines(buf)
        lifted = LIFT_DECODER.decode_lines(buf)
        if len(raws) != len(lifted):
            raise ValueError("the two decoding passes disagree")
        names = [e.event for e in raws]
        props: list[Buffer] = [e.properties for e in raws]
        if len(raws) < lines:
            props = [_unsplit(p) for p in props]
        frame = build_frame(names, props, [e.properties for e in lifted])
        if frame["_epoch"].null_count():
            raise ValueError("a record has no time")
        objects, keys, escaped = frame.select(
            pl.col("properties").str.starts_with("{").all().alias("objects"),
            pl.col("properties").str.count_matches(LIFTED_KEYS).sum().alias("keys"),
            pl.col("properties").str.contains(ESCAPED_KEY).any().alias("escaped"),
        ).row(0)
        if not objects:
            raise ValueError("properties is not an object")
        # a line longer than the cap can only hide in a block longer than the cap (rare with the defaults)
        if len(buf) > self.max_line_bytes and max(map(len, bytes(buf).split(b"\n"))) > self.max_line_bytes:
            raise ValueError("an over-long line: read line by line")
        # null counts are free: only a block with more key names than lifted values is looked at row by row
        if escaped or keys > sum(frame.height - frame[c].null_count() for c in LIFTED_COLUMNS):
            frame = _first_wins(frame)
        return ParsedBlock(frame)

    def _slow(self, buf: bytes, first: int, final: bool) -> ParsedBlock:
        lines = buf.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        numbered = list(enumerate(lines, start=first))
        if self._carry is not None:
            numbered.insert(0, self._carry)
            self._carry = None
        names: list[str] = []
        props: list[Buffer] = []
        values: list[tuple[Any, ...]] = []
        rejects: list[Reject] = []
        rejoined = 0
        i = 0
        while i < len(numbered):
            line_no, line = numbered[i]
            i += 1
            if not line.strip():
                continue
            if len(line) > self.max_line_bytes:
                why = f"the line is longer than max_line_bytes ({self.max_line_bytes:,} bytes)"
                rejects.append(_reject(line_no, why, line))
                continue
            try:
                record = decode_record(line)
            except RecordError as exc:
                if b"terminated early" in line:
                    raise _truncated(line_no, line) from None
                if i == len(numbered) and not final:
                    self._carry = (line_no, line)  # the rest of a split record may open the next block
                    break
                joined = self._rejoin(line, numbered[i][1]) if i < len(numbered) else None
                if joined is None:
                    rejects.append(_reject(line_no, str(exc), line))
                    continue
                record, i, rejoined = joined, i + 1, rejoined + 1
            names.append(record[0])
            props.append(record[1])
            values.append(record[2])
        return ParsedBlock(build_frame(names, props, values), rejects, rejoined)

    @staticmethod
    def _rejoin(first: bytes, second: bytes) -> tuple[str, memoryview, tuple[Any, ...]] | None:
        # Mixpanel occasionally breaks one record over two physical lines; the line break is not
        # part of the record, so the fragments are joined without it.
        try:
            return decode_record(first + second)
        except RecordError:
            return None


# a line per this many bytes or fewer: a loop of ``find`` counts them faster than ``bytes.count``
LONG_LINE_BYTES = 1024
SAMPLE_BYTES = 1 << 16


def _newlines(data: bytes, end: int) -> int:
    """``data.count(b"\\n", 0, end)`` at about half the cost on Mixpanel's lines of ~1 KB, where the GIL
    is held: ``find`` skips a line with memchr, where ``count`` compares every byte. Shorter lines
    (judged on the first 64 KiB, and again as they are counted: a hostile run of blank lines) are left to
    ``count``, which is faster below ~600 bytes a line."""
    sample = min(end, SAMPLE_BYTES)
    most = end // LONG_LINE_BYTES
    if data.count(b"\n", 0, sample) > sample // LONG_LINE_BYTES:
        return data.count(b"\n", 0, end)
    count = 0
    find = data.find
    at = find(b"\n", 0, end)
    while at >= 0:
        count += 1
        if count > most:
            return count + data.count(b"\n", at + 1, end)
        at = find(b"\n", at + 1, end)
    return count


def _first_wins(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows whose properties name a lifted key more often than values were lifted, or spell a key
    with an escape, may hold a duplicate key (msgspec keeps the last one): their lifted columns are
    re-read, first one winning."""
    suspects = frame.select(
        (
            (pl.col("properties").str.count_matches(LIFTED_KEYS) > _lifted_present())
            | pl.col("properties").str.contains(ESCAPED_KEY)
        ).arg_true()
    ).to_series()
    if suspects.len() == 0:
        return frame
    rows = suspects.to_list()
    fixed = []
    for text in frame["properties"].gather(rows).to_list():
        raw = text.encode()
        fixed.append(_lift_first(raw, LENIENT_DECODER.decode(raw)))
    updates = []
    for i, column in enumerate(LIFTED_COLUMNS):
        values = frame[column].scatter(rows, [row[i] for row in fixed])
        updates.append(values)
    return frame.with_columns(updates)


def _lifted_present() -> pl.Expr:
    return pl.sum_horizontal([pl.col(c).is_not_null().cast(pl.UInt32) for c in LIFTED_COLUMNS])


def _reject(line_no: int, why: str, line: bytes) -> Reject:
    return Reject(line_no, why, line[:MAX_REJECT_TEXT].decode("utf-8", "replace"))


def _empty_frame() -> pl.DataFrame:
    return build_frame([], [], [])


def _unsplit(props: Buffer) -> Buffer:
    """A record that spanned lines decoded fine (the break fell between two tokens, where JSON
    allows whitespace), but the break is not part of the source object: take it out."""
    text = bytes(props)
    if b"\n" not in text:
        return props
    return text.replace(b"\r\n", b"").replace(b"\n", b"")
