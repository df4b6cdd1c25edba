"""What the Delta and Iceberg suites share: exporting sandbox days into a block, and the truth to compare."""

from __future__ import annotations

import base64
import io
import pickle
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from deltalake import DeltaTable

from blocks.destinations.base import DestinationBlock
from blocks.destinations.delta import DeltaLakeDestination
from blocks.destinations.formats import location_of
from blocks.destinations.local import LocalDestination
from sandbox import SandboxServer
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import ExportSettings, export_days
from tasks.schema import EVENTS_TABLE
from tasks.warehouses.tableformat import APP_ID
from tests.conftest import credentials_for, fingerprint_of_rows
from tests.forked import run_python
from tests.stores.s3 import S3Server, make_s3_destination


def export(server: SandboxServer, block: DestinationBlock, days: list[date], run_id: str) -> None:
    with MixpanelClient(credentials_for(server).api_settings()) as client:
        export_days(client, block.connect(1), days, ExportSettings(run_id=run_id, identity_mode="simplified"))


def truth(server: SandboxServer, day: date) -> tuple[int, str]:
    want = server.expected(day, day)[day.isoformat()]
    return want["rows"], want["fingerprint"]


def rows_and_fingerprint(frame: pl.DataFrame) -> tuple[int, str]:
    """Recomputed from the ``properties`` text: equal to the sandbox's only if every byte is kept."""
    return frame.height, fingerprint_of_rows(frame)


def race(server: SandboxServer, block: DestinationBlock, day: date, runs: list[str]) -> list[BaseException]:
    """Export ``day`` from several threads at once (each its own run); the errors they ended with."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(runs))

    def run(run_id: str) -> None:
        start.wait()
        try:
            export(server, block, [day], run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


KILLER = """
import base64, os, pickle, signal, sys
from tasks.warehouses import tableformat
from tasks.pipeline.export import ExportSettings, export_days
from tasks.mixpanel.client import MixpanelClient

block, credentials, day = pickle.loads(base64.b64decode(sys.argv[1]))
real = tableformat.reader
def reader_then_die(*args):  # the commit has read its first rows: files may be written, nothing committed
    inner = real(*args)
    def batches():
        for batch in inner:
            yield batch
            os.kill(os.getpid(), signal.SIGKILL)
    return tableformat.pa.RecordBatchReader.from_batches(inner.schema, batches())
tableformat.reader = reader_then_die
with MixpanelClient(credentials.api_settings()) as client:
    export_days(client, block.connect(1), [day], ExportSettings(run_id="killed", identity_mode="simplified"))
"""


def killed_in_its_commit(server: SandboxServer, block: DestinationBlock, day: date) -> None:
    """A run of ``day`` (run id ``killed``) SIGKILLed once the table format's commit has started."""
    payload = base64.b64encode(pickle.dumps((block, credentials_for(server), day))).decode()
    done = run_python(KILLER, payload, timeout=180)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def synced_twice(server: SandboxServer, block: DestinationBlock) -> tuple[str, set[str]]:
    """Two days of events, people and identity written twice (older versions of every table to travel
    to), then a merged user and its identity cluster: what the GDPR scenarios purge."""
    from flows.events import events
    from flows.identity import identity
    from flows.people import people
    from tests.conftest import recent_days
    from tests.sync_kit import merged_user

    credentials = credentials_for(server)
    days = recent_days(2, server)
    for _ in range(2):
        events(credentials, block, from_date=days[0], to_date=days[-1])
        people(credentials, block)
        identity(credentials, block)
    return merged_user(block.connect(1))


def rows_of_cluster(cluster: set[str]) -> list[tuple[str, pl.Expr]]:
    """Per table, the rows that belong to the identity cluster."""
    from tasks.pipeline.exclude import event_rows_of
    from tasks.schema import EVENTS_TABLE, MAPPINGS_TABLE, PEOPLE_TABLE

    ids = list(cluster)
    return [
        (EVENTS_TABLE, event_rows_of(cluster)),
        (PEOPLE_TABLE, pl.col("distinct_id").is_in(ids)),
        (MAPPINGS_TABLE, pl.col("distinct_id").is_in(ids) | pl.col("resolved_distinct_id").is_in(ids)),
    ]


def assert_no_file_holds(files: Iterable[tuple[str, bytes]], cluster: set[str]) -> None:
    """No Parquet file has a row of the cluster and no other file (logs, metadata) names one of its ids."""
    from tasks.pipeline.exclude import event_rows_of

    for name, data in files:
        if name.endswith(".parquet"):
            rows = pl.from_arrow(pq.read_table(io.BytesIO(data)))
            assert isinstance(rows, pl.DataFrame)
            if "event_name" in rows.columns:
                assert rows.filter(event_rows_of(cluster)).height == 0, name
            for column in {"distinct_id", "resolved_distinct_id"} & set(rows.columns):
                assert not rows[column].is_in(list(cluster)).any(), name
        else:
            assert all(i.encode() not in data for i in cluster), name


@dataclass
class Lake:
    """A Delta destination block, where its tables are, and every file under them (for the GDPR check)."""

    block: DeltaLakeDestination
    uri: str
    options: dict[str, str]
    files: Callable[[], list[tuple[str, bytes]]]  # every object under the project's delta folder

    def table(self, name: str = EVENTS_TABLE, version: int | None = None) -> DeltaTable:
        return DeltaTable(f"{self.uri}/{name}", version=version, storage_options=self.options)

    def day(self, day: date) -> pl.DataFrame:
        """The day through delta-rs (pyarrow) with a partition filter."""
        rows = self.table().to_pyarrow_table(filters=[("day", "=", day.isoformat())])
        return pl.from_arrow(rows)  # type: ignore[return-value]

    def scan_day(self, day: date) -> pl.DataFrame:
        """The same day through polars' own Delta reader."""
        scan = pl.scan_delta(f"{self.uri}/{EVENTS_TABLE}", storage_options=self.options or None)
        return scan.filter(pl.col("day") == day.isoformat()).collect()

    def held(self, day: date) -> int | None:
        return self.table().transaction_version(f"{APP_ID}/{day.isoformat()}")


def local_lake(tmp_path: Path) -> Lake:
    block = DeltaLakeDestination(files=LocalDestination(path=str(tmp_path), create_missing=True))
    folder = tmp_path / "1" / "delta"

    def files() -> list[tuple[str, bytes]]:
        return [(str(p), p.read_bytes()) for p in folder.rglob("*") if p.is_file()]

    return Lake(block, str(folder), {}, files)


def s3_lake(server: S3Server) -> Lake:
    files_block = make_s3_destination(server, prefix="lake")
    block = DeltaLakeDestination(files=files_block)
    location = location_of(files_block, 1, "delta")
    bucket = files_block.bucket.bucket_name
    client = server.client()

    def files() -> list[tuple[str, bytes]]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="lake/1/delta/").get("Contents", [])
        return [(o["Key"], client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listed]

    # readers go straight to moto (the fault proxy is for the pipeline's own requests)
    return Lake(block, location.uri, location.options | {"AWS_ENDPOINT_URL": server.moto_url}, files)
