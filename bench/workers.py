"""The measured paths. Each runs alone in a fresh interpreter: `python -m bench.workers --job JSON`.

A fresh process per measurement keeps one path's heap (and imported libraries) out of another's peak
RSS; the parent reads that peak with ``os.wait4``. The child also reports its RSS right after imports,
so the cost of the libraries can be told apart from the cost of the export itself.

Paths:
- ``drain``: read the body and throw it away (the ceiling set by HTTP and the sandbox).
- ``pipeline``: the project's own ``tasks.export.export_days`` into a local folder.
- ``naive``: what peer connectors do (``iter_lines`` + ``json.loads`` + ``json.dumps``).
- ``ijson``: the same, with a streaming ``ijson`` parser instead of ``iter_lines``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import ijson
import polars as pl

from bench.common import EXIT_BACKEND_ABORTED, EXIT_MISMATCH, PROJECT_ID, SECRET, USERNAME
from blocks.mixpanel import MixpanelCredentials
from tasks.export import ExportSettings, export_days
from tasks.mixpanel_client import MixpanelClient
from tasks.objectstore import ObjectStoreDestination
from tasks.storage import LocalStorage

# Peer connectors flush every 50k rows; the same batch size for both baselines keeps them comparable.
BATCH_ROWS = 50_000
# ijson's own default read size; also the chunk size we hand it.
IJSON_CHUNK_BYTES = 1 << 16
DRAIN_CHUNK_BYTES = 1 << 20

NAIVE_SCHEMA = {
    "device_id": pl.String,
    "distinct_id": pl.String,
    "event_name": pl.String,
    "insert_id": pl.String,
    "properties": pl.String,
    "time": pl.Int64,
    "user_id": pl.String,
}


@dataclass(frozen=True)
class Job:
    path: str
    url: str
    day: str
    expected_rows: int
    expected_fingerprint: str
    workdir: str
    ijson_backend: str = "yajl2_c"


@dataclass
class Outcome:
    rows: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    body_bytes: int | None = None
    files: int = 0
    output_bytes: int = 0
    import_rss_kib: int = 0
    self_peak_rss_kib: int = 0
    note: str = ""
    error: str | None = None


class Mismatch(RuntimeError):
    """The path produced a different day than the sandbox served."""


class BackendAborted(RuntimeError):
    """The ijson backend raised on the data: reported, not hidden."""


def current_rss_kib() -> int:
    # /proc/self/statm counts pages; RSS right now (ru_maxrss would be the peak so far).
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def check_rows(job: Job, rows: int) -> None:
    if rows != job.expected_rows:
        raise Mismatch(f"{job.path}: {rows} rows, the sandbox served {job.expected_rows}")


@contextmanager
def export_response(job: Job) -> Iterator[httpx.Response]:
    """The raw export body, no gzip (the sandbox runs with --no-gzip), as a peer connector opens it."""
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


def run_pipeline(job: Job, out: Path) -> Outcome:
    credentials = MixpanelCredentials(
        project_id=PROJECT_ID,
        service_account_username=USERNAME,
        service_account_secret=SECRET,
        api_base_url=job.url,
    )
    destination = ObjectStoreDestination(LocalStorage(out), PROJECT_ID)
    settings = ExportSettings(run_id="bench", file_format="parquet")
    with MixpanelClient(credentials) as client:
        (result,) = export_days(client, destination, [date.fromisoformat(job.day)], settings)
    check_rows(job, result.rows)
    # The fingerprint covers every row's event name and exact properties bytes: same data, not just same count.
    if result.fingerprint != job.expected_fingerprint:
        raise Mismatch(f"pipeline: fingerprint {result.fingerprint}, expected {job.expected_fingerprint}")
    return Outcome(rows=result.rows, files=result.files, output_bytes=result.bytes)


class BatchWriter:
    """Columns lifted per record, flushed every ``BATCH_ROWS`` into one zstd Parquet file."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows = 0
        self.files = 0
        self.output_bytes = 0
        self._cols: dict[str, list[Any]] = {name: [] for name in NAIVE_SCHEMA}

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
        frame = pl.DataFrame(self._cols, schema=NAIVE_SCHEMA)
        frame = frame.with_columns(pl.from_epoch("time", time_unit="s").dt.replace_time_zone("UTC"))
        path = self.out / f"part-{self.files:05d}.parquet"
        frame.write_parquet(path, compression="zstd")
        self.rows += height
        self.files += 1
        self.output_bytes += path.stat().st_size
        self._cols = {name: [] for name in NAIVE_SCHEMA}


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
            raise BackendAborted(f"ijson {job.ijson_backend}: {type(exc).__name__}: {exc}") from exc
        outcome.body_bytes = response.num_bytes_downloaded
    outcome.note = f"ijson backend {job.ijson_backend}, use_float=True"
    return outcome


RUNNERS: dict[str, Callable[[Job, Path], Outcome]] = {
    "drain": run_drain,
    "pipeline": run_pipeline,
    "naive": run_naive,
    "ijson": run_ijson,
}


def measure(job: Job) -> Outcome:
    """Times one path from opening the request to the last file closed (imports are not counted)."""
    out = Path(job.workdir)
    out.mkdir(parents=True, exist_ok=True)
    import_rss = current_rss_kib()
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = RUNNERS[job.path](job, out)
    outcome.seconds = time.perf_counter() - wall
    # process_time counts every thread (polars and pyarrow work in their own pools).
    outcome.cpu_seconds = time.process_time() - cpu
    outcome.import_rss_kib = import_rss
    outcome.self_peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    parser.add_argument("--job", required=True, help="Job as JSON")
    parser.add_argument("--result", required=True, type=Path, help="where to write the Outcome as JSON")
    args = parser.parse_args(argv)
    job = Job(**json.loads(args.job))
    code = 0
    try:
        outcome = measure(job)
    except (Mismatch, BackendAborted) as exc:
        traceback.print_exc()
        code = EXIT_MISMATCH if isinstance(exc, Mismatch) else EXIT_BACKEND_ABORTED
        outcome = Outcome(error=str(exc))
    args.result.write_text(json.dumps(asdict(outcome)))
    return code


if __name__ == "__main__":
    sys.exit(main())
