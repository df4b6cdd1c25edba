"""The reference paths: an HTTP-only drain (the ceiling) and the two ways peer connectors read the export.

Both baselines lift the same columns into per-column lists (cheaper than the dicts most connectors
build, so the comparison errs in their favour), re-serialise ``properties`` with ``json.dumps`` and
write one zstd Parquet file per 50k-row batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ijson
import polars as pl

from bench.common import PROJECT_ID, SECRET, USERNAME, BackendAborted, Job, Outcome, check_rows

# Peer connectors flush every 50k rows; the same batch size for both baselines keeps them comparable.
BATCH_ROWS = 50_000
# ijson's own default read size; also the chunk size we hand it.
IJSON_CHUNK_BYTES = 1 << 16
DRAIN_CHUNK_BYTES = 1 << 20

SCHEMA = {
    "device_id": pl.String,
    "distinct_id": pl.String,
    "event_name": pl.String,
    "insert_id": pl.String,
    "properties": pl.String,
    "time": pl.Int64,
    "user_id": pl.String,
}


@contextmanager
def export_response(job: Job) -> Iterator[httpx.Response]:
    """The raw export body, no gzip (the sandbox runs with --no-gzip), opened as a peer connector does."""
    params = {"from_date": job.day, "to_date": job.day, "project_id": str(PROJECT_ID)}
    timeout = httpx.Timeout(10.0, read=900.0)
    with (
        httpx.Client(auth=(USERNAME, SECRET), timeout=timeout) as http,
        http.stream("GET", f"{job.url}/api/2.0/export", params=params) as response,
    ):
        response.raise_for_status()
        yield response


def run_drain(job: Job, out: Path) -> Outcome:
    lines = 0
    with export_response(job) as response:
        for chunk in response.iter_bytes(DRAIN_CHUNK_BYTES):
            lines += chunk.count(b"\n")
        received = response.num_bytes_downloaded
    check_rows(job, lines)
    return Outcome(rows=lines, body_bytes=received)


class BatchWriter:
    """Columns lifted per record, flushed every ``BATCH_ROWS`` into one zstd Parquet file."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows = 0
        self.files = 0
        self.output_bytes = 0
        self._cols: dict[str, list[Any]] = {name: [] for name in SCHEMA}

    def add(self, record: dict[str, Any]) -> None:
        props = record["properties"]
        cols = self._cols
        cols["device_id"].append(props.get("$device_id"))
        cols["distinct_id"].append(props.get("distinct_id"))
        cols["event_name"].append(record["event"])
        cols["insert_id"].append(props.get("$insert_id"))
        # Re-serialised: what connectors store, and where big ints, float digits and escapes drift.
        cols["properties"].append(json.dumps(props))
        cols["time"].append(props.get("time"))
        cols["user_id"].append(props.get("$user_id"))
        if len(cols["time"]) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        height = len(self._cols["time"])
        if height == 0:
            return
        frame = pl.DataFrame(self._cols, schema=SCHEMA)
        frame = frame.with_columns(pl.from_epoch("time", time_unit="s").dt.replace_time_zone("UTC"))
        path = self.out / f"part-{self.files:05d}.parquet"
        frame.write_parquet(path, compression="zstd")
        self.rows += height
        self.files += 1
        self.output_bytes += path.stat().st_size
        self._cols = {name: [] for name in SCHEMA}


def write_records(job: Job, out: Path, records: Iterator[dict[str, Any]]) -> Outcome:
    writer = BatchWriter(out)
    for record in records:
        writer.add(record)
    writer.flush()
    check_rows(job, writer.rows)
    return Outcome(rows=writer.rows, files=writer.files, output_bytes=writer.output_bytes)


def run_naive(job: Job, out: Path) -> Outcome:
    with export_response(job) as response:
        records = (json.loads(line) for line in response.iter_lines() if line)
        outcome = write_records(job, out, records)
        outcome.body_bytes = response.num_bytes_downloaded
    return outcome


class ChunkReader:
    """The one method ijson needs from a file: ``read`` hands over the next network chunk, b"" at the end."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        # ijson probes read(0) for bytes vs str: consuming a chunk there would drop data.
        if size == 0:
            return b""
        return next(self._chunks, b"")


def run_ijson(job: Job, out: Path) -> Outcome:
    backend = ijson.get_backend(job.ijson_backend)
    with export_response(job) as response:
        reader = ChunkReader(response.iter_bytes(IJSON_CHUNK_BYTES))
        # use_float: without it ijson yields Decimal for every float and json.dumps raises TypeError.
        records = backend.items(reader, "", multiple_values=True, use_float=True)
        try:
            outcome = write_records(job, out, records)
        except (ijson.JSONError, ValueError, OverflowError, TypeError) as exc:
            message = " ".join(str(exc).split())  # yajl's message spans lines; the report wants one
            raise BackendAborted(f"ijson {job.ijson_backend}: {type(exc).__name__}: {message}") from exc
        outcome.body_bytes = response.num_bytes_downloaded
    outcome.note = f"ijson backend {job.ijson_backend}, use_float=True"
    return outcome
