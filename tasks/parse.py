"""Decode Mixpanel's JSON-lines export into polars frames in the events schema.

Hot path: msgspec decodes a newline-cut block of lines twice, once keeping each ``properties``
object as raw bytes (``msgspec.Raw``: byte-identical, so big integers, float digits, unicode
escapes and key order survive untouched) and once lifting the few columns we expose. Both passes
run in C; Python only touches column lists. A block that does not decode cleanly is re-read line
by line, so one bad record costs one slow block, not a slow stream.

Mixpanel quirks handled here: a record split across two physical lines is re-joined; a line
containing ``terminated early`` or an unterminated last line means the body was cut short
(retriable); ids may arrive as numbers.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa
import xxhash

from tasks.errors import TruncatedStreamError

BLOCK_BYTES = 8 << 20
MAX_REJECT_TEXT = 2000
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
    """One row's share of a partition fingerprint (see ``tasks.manifest``)."""
    return xxhash.xxh3_64_intdigest(properties, seed=xxhash.xxh3_64_intdigest(event_name.encode()))


def _row_hashes(names: list[str], raws: list[Buffer]) -> list[int]:
    # the event name enters as the seed: one call per row and no copy of the properties
    seeds = {name: xxhash.xxh3_64_intdigest(name.encode()) for name in set(names)}
    digest = xxhash.xxh3_64_intdigest
    return [digest(r, seed=seeds[n]) for n, r in zip(names, raws, strict=True)]


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


def _properties_array(raws: list[Buffer]) -> pa.Array:
    offsets = array("q", accumulate(map(len, raws), initial=0))
    data = b"".join(raws)
    arr = pa.LargeStringArray.from_buffers(len(raws), pa.py_buffer(offsets), pa.py_buffer(data))
    arr.validate(full=True)  # raises on invalid UTF-8: msgspec does not check skipped strings
    return arr


def build_frame(
    names: list[str], raws: list[Buffer], lifted: list[tuple[Any, ...]] | list[Lifted]
) -> pl.DataFrame:
    """Columns of the events schema plus helpers: ``_epoch`` (exported time, seconds), ``_ptime``
    (mp_processing_time_ms) and ``_hash`` (row fingerprint share)."""
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
        keys = ("time", "distinct_id", "insert_id", "device_id", "user_id", "ptime")
        cols = {k: [row[i] for row in lifted] for i, k in enumerate(keys)}
    hashes = _row_hashes(names, raws)
    return pl.DataFrame(
        [
            _string_series("device_id", cols["device_id"]),
            _string_series("distinct_id", cols["distinct_id"]),
            pl.Series("event_name", names, dtype=pl.String),
            _string_series("insert_id", cols["insert_id"]),
            pl.Series("properties", pl.from_arrow(_properties_array(raws))),
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


def decode_record(line: bytes | memoryview) -> tuple[str, memoryview, tuple[Any, ...]]:
    """Slow path for one record; raises ``RecordError`` with the reason when it is unusable."""
    try:
        raw = RAW_DECODER.decode(line)
    except msgspec.DecodeError as exc:
        raise RecordError(f"invalid JSON record: {exc}") from exc
    props = memoryview(raw.properties)
    if props[:1] != b"{":
        raise RecordError("properties is not a JSON object")
    try:
        bytes(props).decode("utf-8")
        lifted = LENIENT_DECODER.decode(props)
    except (UnicodeDecodeError, msgspec.DecodeError) as exc:
        raise RecordError(f"invalid properties: {exc}") from exc
    epoch = _coerce_int(lifted.time, "properties.time")
    if epoch is None:
        raise RecordError("the record has no properties.time")
    ids = (_text(lifted.distinct_id), _text(lifted.insert_id), _text(lifted.device_id), _text(lifted.user_id))
    ptime = _coerce_int(lifted.mp_processing_time_ms, "mp_processing_time_ms")
    return raw.event, props, (epoch, *ids, ptime)


def _truncated(line_no: int, line: bytes) -> TruncatedStreamError:
    return TruncatedStreamError(
        f"Mixpanel cut the export short at line {line_no} ({line[:60].decode('utf-8', 'replace')!r}); "
        "retrying the whole unit."
    )


class StreamParser:
    """Feed response bytes in, get ``ParsedBlock`` s out; memory is bounded by ``block_bytes``."""

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self.block_bytes = block_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._next_line = 1
        self._carry: tuple[int, bytes] | None = None
        self.lines = 0

    def feed(self, data: bytes) -> Iterator[ParsedBlock]:
        self._parts.append(data)
        self._size += len(data)
        if self._size < self.block_bytes:
            return
        buf = b"".join(self._parts)
        cut = buf.rfind(b"\n") + 1
        self._parts = [buf[cut:]] if cut < len(buf) else []
        self._size = len(buf) - cut
        if cut:
            yield from self._block(buf, cut, final=False)

    def finish(self) -> Iterator[ParsedBlock]:
        buf = b"".join(self._parts)
        self._parts, self._size = [], 0
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

    def _block(self, data: bytes, end: int, final: bool) -> Iterator[ParsedBlock]:
        """Decode ``data[:end]``, which holds whole lines only."""
        first = self._next_line
        count = data.count(b"\n", 0, end)
        self._next_line += count
        self.lines += count
        if not end:
            return
        view = memoryview(data)[:end]
        if self._carry is None:
            try:
                yield self._fast(view, count)
                return
            except (msgspec.DecodeError, pa.ArrowInvalid, pl.exceptions.PolarsError, TypeError, ValueError):
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
        if not frame["properties"].str.starts_with("{").all():
            raise ValueError("properties is not an object")
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
        props: list[memoryview] = []
        values: list[tuple[Any, ...]] = []
        rejects: list[Reject] = []
        rejoined = 0
        i = 0
        while i < len(numbered):
            line_no, line = numbered[i]
            i += 1
            if not line.strip():
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
                    rejects.append(
                        Reject(line_no, str(exc), line[:MAX_REJECT_TEXT].decode("utf-8", "replace"))
                    )
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


def _unsplit(props: Buffer) -> Buffer:
    """A record that spanned lines decoded fine (the break fell between two tokens, where JSON
    allows whitespace), but the break is not part of the source object: take it out."""
    text = bytes(props)
    if b"\n" not in text:
        return props
    return text.replace(b"\r\n", b"").replace(b"\n", b"")
