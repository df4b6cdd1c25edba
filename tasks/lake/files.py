"""Frames to files of bounded size: Parquet (zstd) by default, gzipped JSON lines on request.

A partition's rows go to a rolling sequence of files; one frame is one row group, so memory holds
at most one frame whatever the size of the day. ``write`` is ``rows_of`` (the frame converted, which
holds the GIL) then ``write_rows`` (which releases it while it encodes): a pipelined export calls
them in two threads.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.lake.layout import PART
from tasks.schema import EVENT_COLUMNS, EVENTS_SCHEMA

DICTIONARY_COLUMNS = ["device_id", "distinct_id", "event_name", "user_id"]


class FileFormat(StrEnum):
    PARQUET = "parquet"
    JSONL_GZ = "jsonl.gz"


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    rows: int
    bytes: int


class JsonLinesRow(msgspec.Struct, array_like=False, omit_defaults=False):
    device_id: str | None
    distinct_id: str | None
    event_name: str
    insert_id: str | None
    properties: msgspec.Raw
    time: str
    user_id: str | None


_ENCODER = msgspec.json.Encoder()


def _jsonl_bytes(frame: pl.DataFrame) -> bytes:
    """Mixpanel's own pipeline files: one object per line, ``properties`` as a JSON object."""
    times = frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_list()
    rows = [
        JsonLinesRow(d, di, e, i, msgspec.Raw(p.encode()), t, u)
        for d, di, e, i, p, t, u in zip(
            frame["device_id"].to_list(),
            frame["distinct_id"].to_list(),
            frame["event_name"].to_list(),
            frame["insert_id"].to_list(),
            frame["properties"].to_list(),
            times,
            frame["user_id"].to_list(),
            strict=True,
        )
    ]
    return _ENCODER.encode_lines(rows)


def _statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns whose min/max go into the row groups' statistics: all but the JSON text ones, whose
    bounds (the first 4 KB of two documents) prune no query and cost some 5 % of the write."""
    return [field.name for field in schema if (field.metadata or {}).get(b"format") != b"json"]


@dataclass(frozen=True)
class Rows:
    """Rows ready for a file (``RollingFiles.rows_of``): ``count`` of them, as the file's format takes them."""

    count: int
    data: pa.Table | bytes


class RollingFiles:
    """Writes one partition's frames into ``part-NNNNN`` files in ``directory``."""

    def __init__(
        self,
        directory: Path,
        fmt: FileFormat = FileFormat.PARQUET,
        max_file_rows: int = 1_000_000,
        max_file_bytes: int = 256 << 20,
        schema: pa.Schema | None = EVENTS_SCHEMA,
        on_close: Callable[[WrittenFile], None] | None = None,
    ) -> None:
        """``schema=None`` takes the schema of the first frame (small state tables); ``on_close`` is
        called with each finished file, while the next one is being written (uploads start early)."""
        self.on_close = on_close
        self.directory = directory
        self.schema = schema
        self.fmt = FileFormat(fmt)
        self.max_file_rows = max_file_rows
        self.max_file_bytes = max_file_bytes
        self.files: list[WrittenFile] = []
        self._writer: pq.ParquetWriter | gzip.GzipFile | None = None
        self._path: Path | None = None
        self._rows = 0

    def write(self, frame: pl.DataFrame) -> None:
        self.write_rows(self.rows_of(frame))

    def rows_of(self, frame: pl.DataFrame) -> Rows:
        """A frame in the form the file takes it (an Arrow table, or JSON-lines bytes): the conversion
        holds the GIL, so a pipelined export makes it in its producing thread and leaves the writing
        thread only the write, which releases it."""
        if self.fmt != FileFormat.PARQUET:
            return Rows(frame.height, _jsonl_bytes(frame) if frame.height else b"")
        return Rows(frame.height, self._arrow(frame))

    def write_rows(self, rows: Rows) -> None:
        if rows.count == 0:
            return
        if self._writer is None:
            self._open(rows.data)
        if isinstance(self._writer, pq.ParquetWriter):
            assert isinstance(rows.data, pa.Table)
            schema = self.schema
            assert schema is not None  # set by _open
            table = rows.data if rows.data.schema == schema else rows.data.cast(schema)
            self._writer.write_table(table, row_group_size=rows.count)
        else:
            assert self._writer is not None and isinstance(rows.data, bytes)
            self._writer.write(rows.data)
        self._rows += rows.count
        if self._rows >= self.max_file_rows or self._size() >= self.max_file_bytes:
            self._close_current()

    def close(self) -> list[WrittenFile]:
        self._close_current()
        return self.files

    def seal(self) -> None:
        """Finish the current file (its writer's buffers are freed); the next frame opens another."""
        self._close_current()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _arrow(self, frame: pl.DataFrame) -> pa.Table:
        if self.schema is EVENTS_SCHEMA:
            # polars' own string views cost no copy; pyarrow's cast to the file's strings releases the GIL
            # (polars' conversion to the oldest Arrow form holds it, and costs twice as much). The
            # copy is made here, not in the writing thread: the views would keep whole parse blocks alive.
            views = frame.select(EVENT_COLUMNS).to_arrow(compat_level=pl.CompatLevel.newest())
            return views.cast(EVENTS_SCHEMA)
        # read once: a file without a schema takes the first table's, set by the writing thread
        schema = self.schema
        table = frame.to_arrow()
        return table.cast(schema) if schema is not None else table

    def _open(self, data: pa.Table | bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / f"{PART}{len(self.files):05d}.{self.fmt.value}"
        self._rows = 0
        if self.fmt == FileFormat.PARQUET:
            if self.schema is None:
                assert isinstance(data, pa.Table)
                self.schema = data.schema
            # unique values (properties, insert_id) gain nothing from dictionary pages, only cost
            dictionary = DICTIONARY_COLUMNS if self.schema is EVENTS_SCHEMA else True
            self._writer = pq.ParquetWriter(
                self._path,
                self.schema,
                compression="zstd",
                use_dictionary=dictionary,  # type: ignore[arg-type]  # a column list is valid; pyarrow-stubs say bool
                write_statistics=_statistics_columns(self.schema),
            )
        else:
            self._writer = gzip.open(self._path, "wb", compresslevel=6)  # noqa: SIM115 - closed in _close_current

    def _size(self) -> int:
        assert self._path is not None
        return self._path.stat().st_size

    def _close_current(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        assert self._path is not None
        written = WrittenFile(self._path, self._rows, self._path.stat().st_size)
        self.files.append(written)
        self._writer = None
        if self.on_close is not None:
            self.on_close(written)


# a row group's frames at most (some 6.5k events of 1.2 KB, 1-1.5 MB of zstd Parquet): the pipelined
# export holds up to four of them at once (buffered, cast and waiting to be queued, queued for the
# writer, being written), so this sets much of its memory. On 3 x 300k events, 16 MiB peaked 45-65 MiB
# higher than 8 (493-500 against 435-448 MiB) for no faster export; a day's file grows by ~2 %
# (43 row groups of 7k rows against 23 of 13k; 9 % larger than 50k-row groups)
ROW_GROUP_BYTES = 8 << 20


class PartitionBuffer:
    """Holds frames per partition and writes the largest partition's frames as one row group when
    the shared byte budget is reached: row groups stay large even when a multi-day response
    interleaves its days, and memory is bounded by ``budget_bytes`` whatever the days' sizes."""

    def __init__(
        self,
        writers: dict[int, RollingFiles],
        budget_bytes: int = ROW_GROUP_BYTES,
        write: Callable[[RollingFiles, pl.DataFrame], None] | None = None,
    ) -> None:
        """``write`` does a flush's write (default: at once; the export hands it to another thread)."""
        self.writers = writers
        self.budget_bytes = budget_bytes
        self._write = write or RollingFiles.write
        self._frames: dict[int, list[pl.DataFrame]] = {key: [] for key in writers}
        self._bytes: dict[int, int] = dict.fromkeys(writers, 0)

    def add(self, key: int, frame: pl.DataFrame) -> None:
        self._frames[key].append(frame)
        self._bytes[key] += int(frame.estimated_size())  # in bytes, the default unit: an int already
        if sum(self._bytes.values()) >= self.budget_bytes:
            self.flush(max(self._bytes, key=self._bytes.__getitem__))

    def flush(self, key: int) -> None:
        frames = self._frames[key]
        if frames:
            self._write(self.writers[key], pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0])
        self._frames[key] = []
        self._bytes[key] = 0

    def flush_all(self) -> None:
        for key in self.writers:
            self.flush(key)


# reading committed files back (purge, recount) ------------------------------------------------------

BATCH_ROWS = 100_000
TIME = pl.Datetime("us", "UTC")


def event_batches(data: bytes, fmt: FileFormat) -> Iterator[pl.DataFrame]:
    """The rows of one committed events file, in frames of at most ``BATCH_ROWS``."""
    if fmt == FileFormat.PARQUET:
        for record_batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=BATCH_ROWS):
            frame = pl.from_arrow(record_batch)
            assert isinstance(frame, pl.DataFrame)  # a batch makes a frame; polars types it frame or series
            yield frame
        return
    decoder = msgspec.json.Decoder(JsonLinesRow)
    with gzip.open(io.BytesIO(data), "rb") as lines:
        batch: list[JsonLinesRow] = []
        for line in lines:
            batch.append(decoder.decode(line))
            if len(batch) >= BATCH_ROWS:
                yield _json_frame(batch)
                batch = []
        if batch:
            yield _json_frame(batch)


def _json_frame(rows: list[JsonLinesRow]) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "device_id": [r.device_id for r in rows],
            "distinct_id": [r.distinct_id for r in rows],
            "event_name": [r.event_name for r in rows],
            "insert_id": [r.insert_id for r in rows],
            "properties": [bytes(r.properties).decode() for r in rows],
            "time": [r.time for r in rows],
            "user_id": [r.user_id for r in rows],
        },
        schema={c: pl.String for c in EVENT_COLUMNS},
    )
    return frame.with_columns(
        pl.col("time").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC").cast(TIME)
    )
