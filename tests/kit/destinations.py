"""Every destination as one case (the pattern of dlt's ``destinations_configs``): how to build it, how to
read a day back through its own reader, what it records as committed, its readable versions and objects,
and what it can do. The scenarios (tests/destinations/test_destination_scenarios.py) are written once over ``CASES``.

A case is one entry of ``CASES``. A new destination needs one entry and, if it has one, a ``Target``
subclass for its reader; a new store under Delta or Iceberg needs its name in ``TABLE_FORMAT_STORES``
and, where readers need them, its options in ``reader_options``. Invariants:

- a ``Target`` reads with the destination's own reader (delta-rs and polars for Delta, pyiceberg and
  polars for Iceberg, the warehouse's SQL, the Glue partitions for Spectrum, the manifest for files),
  never with the code that wrote it;
- ``cost`` says what a case starts: 0 nothing (in process), 1 a shared store server (moto, the GCS
  server, Azurite), 2 a warehouse emulator. A scenario runs the expensive cases only when it needs them
  (``cases(..., most=...)``), so adding a scenario does not start an emulator by default.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
import xxhash

from blocks.destinations.base import BucketDestination, DestinationBlock
from blocks.destinations.catalog import AnyDestination
from blocks.destinations.delta import DeltaLakeDestination
from blocks.destinations.iceberg import IcebergDestination
from blocks.destinations.local import LocalDestination
from blocks.destinations.spectrum import RedshiftSpectrumDestination
from sandbox import SandboxServer
from sandbox.data import day_lines
from tasks.lake.commit import Lake
from tasks.lake.manifest import Manifest, fingerprint_hex
from tasks.lake.tables import read_parquet
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import ExportSettings, export_days
from tasks.schema import EVENTS_TABLE
from tasks.warehouses.warehouse import WarehouseHook
from tests.conftest import credentials_for, fingerprint_of_rows
from tests.kit.forked import run_python
from tests.kit.warehouses import WAREHOUSES, Warehouse, glue_database
from tests.stores.azure import make_azure_destination
from tests.stores.gcs import make_gcs_destination
from tests.stores.s3 import S3Server, make_s3_destination

# what a case can do: the scenarios ask for these
DAYS = "days"  # replaces whole days (every destination)
KILL = "kill"  # a commit can be SIGKILLed at the points of ``kill_points``
RACE = "race"  # runs of one day may race each other in one destination
HOURLY = "hourly"  # appends hourly increments to a day, replaced by the nightly run
VERSIONS = "versions"  # keeps older versions readers can travel to (what a purge must reach too)

Reading = tuple[int, str]  # rows and the order-free fingerprint of a day


# ---- the truth and the one export every scenario runs ----------------------------------------------


def export(server: SandboxServer, block: DestinationBlock, days: list[date], run_id: str) -> None:
    with MixpanelClient(credentials_for(server).api_settings()) as client:
        export_days(client, block.connect(1), days, ExportSettings(run_id=run_id, identity_mode="simplified"))


def canonical(text: str) -> str:
    """JSON-equal texts give the same string (big integers stay exact: Python's json keeps them)."""
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(rows: list[tuple[str, str]], exact: bool) -> Reading:
    """Rows and the order-free fingerprint of (event name, properties text) pairs; ``exact=False``
    over parsed values, for a warehouse whose JSON type re-serialises the text."""
    digest = xxhash.xxh3_64_intdigest
    texts = ((n, p if exact else canonical(p)) for n, p in rows)
    return len(rows), fingerprint_hex(sum(digest(p.encode(), seed=digest(n.encode())) for n, p in texts))


def sandbox_day(server: SandboxServer, day: date, exact: bool = True) -> Reading:
    """The sandbox's rows and fingerprint of the day: its own figures, or over parsed values."""
    if exact:
        want = server.expected(day, day)[day.isoformat()]
        return want["rows"], want["fingerprint"]
    served = [json.loads(line) for line in day_lines(server.cfg, day)]
    return fingerprint([(e["event"], json.dumps(e["properties"])) for e in served], exact=False)


def reading(frame: pl.DataFrame) -> Reading:
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


# ---- SIGKILL at a point of the commit --------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    name: str
    switched: bool  # the manifest already names the killed run when the process dies


FILE_POINTS = (
    KillPoint("upload", False),  # the files of the run are being staged
    KillPoint("publish", False),  # files moved to their final names, manifest not switched yet
    KillPoint("switch", False),  # files published, killed as the manifest's conditional write starts
    KillPoint("cleanup", True),  # manifest switched, the old version not deleted yet
)
FORMAT_POINT = KillPoint("table-format", True)  # the table format's commit has read its first rows
LOAD_POINT = KillPoint("load", True)  # the warehouse has replaced the day's rows, not recorded it yet

KILLER = """
import base64, os, pickle, signal, sys
from tasks.lake import commit as objectstore
from tasks.pipeline.export import ExportSettings, export_days
from tasks.mixpanel.client import MixpanelClient

block, creds, days, where = pickle.loads(base64.b64decode(sys.argv[1]))

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

destination = block.connect(1)
if where == "upload":
    objectstore.Stage.add = die
elif where == "publish":
    real = objectstore.Lake._publish
    def publish_then_die(self, staged, folder, run):
        real(self, staged, folder, run)
        die()
    objectstore.Lake._publish = publish_then_die
elif where == "switch":
    store = type(destination.storage)
    real_put = store.put_bytes
    def put_then_die(self, key, data, **condition):
        if "/_state/manifests/" in key:
            die()
        return real_put(self, key, data, **condition)
    store.put_bytes = put_then_die
elif where == "cleanup":
    objectstore.Lake._remove_unlisted = die
elif where == "table-format":
    from tasks.warehouses import tableformat
    real_reader = tableformat.reader
    def reader_then_die(*args):
        inner = real_reader(*args)
        def batches():
            for batch in inner:
                yield batch
                die()
        return tableformat.pa.RecordBatchReader.from_batches(inner.schema, batches())
    tableformat.reader = reader_then_die
elif where == "load":
    (hook,) = destination.hooks
    type(hook.loader)._record = die
with MixpanelClient(creds.api_settings()) as client:
    export_days(client, destination, days, ExportSettings(run_id="killed", identity_mode="simplified"))
"""


def kill_in_commit(server: SandboxServer, block: DestinationBlock, day: date, point: KillPoint) -> None:
    """A run of ``day`` (run id ``killed``) SIGKILLed at ``point``, in a process of its own."""
    payload = base64.b64encode(pickle.dumps((block, credentials_for(server), [day], point.name))).decode()
    done = run_python(KILLER, payload, timeout=180)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


# ---- the targets: one built case, read through its own reader --------------------------------------


class Target:
    """A destination block built for one test, and how to look at what it holds."""

    exact = True  # False: the warehouse's JSON type re-serialises: fingerprints over parsed values
    folder = EVENTS_TABLE  # where under the project its own objects are

    def __init__(self, block: AnyDestination) -> None:
        self.block = block

    def destination(self) -> Lake:
        return self.block.connect(1)

    def manifest(self, day: date) -> Manifest:
        found = self.destination().manifest(EVENTS_TABLE, day.isoformat())
        assert found is not None, f"no manifest for {day}"
        return found

    def truth(self, server: SandboxServer, day: date) -> Reading:
        return sandbox_day(server, day, self.exact)

    def readings(self, day: date) -> list[Reading]:
        """The day through each of the destination's readers."""
        raise NotImplementedError

    def recorded_run(self, day: date) -> str | None:
        """The run whose version the destination's own record says it holds for the day."""
        raise NotImplementedError

    def holds(self, manifest: Manifest) -> bool:
        """What the destination records as held for the day is ``manifest``'s version."""
        return self.recorded_run(date.fromisoformat(manifest.partition)) == manifest.run_id

    def increments(self, day: date) -> int:
        """The hourly increments the destination records on the day's version."""
        return self.manifest(day).increments

    def assert_clean(self, day: date, run: str) -> None:
        """Nothing of another version, nor of a killed or lost run, is left beside the current one, and
        ``run`` left no staging (a killed run's staging goes once stale: test_objectstore)."""
        dest = self.destination()
        manifest = self.manifest(day)
        prefix = dest.data_prefix(EVENTS_TABLE, day.isoformat())
        files = {i.key for i in dest.storage.list(prefix) if "/" not in i.key[len(prefix) :]}
        assert files == {f.key for f in manifest.files}, "the files of other versions are gone"
        assert not [i.key for i in dest.storage.list("1/_staging/") if run in i.key], "no staging left"

    def versions(self, table: str) -> Iterator[tuple[str, pl.DataFrame]]:
        """Every version of ``table`` a reader can still reach, named."""
        raise NotImplementedError

    def objects(self) -> list[tuple[str, bytes]]:
        """Every object of its own folder with its bytes, through the destination's store."""
        dest = self.destination()
        return [(i.key, dest.storage.get_bytes(i.key) or b"") for i in dest.storage.list(f"1/{self.folder}/")]


class FileTarget(Target):
    """A file destination: the manifest names the day's files, the files are Parquet."""

    def readings(self, day: date) -> list[Reading]:
        dest = self.destination()
        return [reading(read_parquet(dest, [f.key for f in self.manifest(day).files]))]

    def recorded_run(self, day: date) -> str | None:
        return self.manifest(day).run_id

    def assert_clean(self, day: date, run: str) -> None:
        super().assert_clean(day, run)
        root = self.destination().storage.local_path("1")
        if root is not None:  # a local folder: no empty folder, no lock file, no temporary file left behind
            empty = [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]
            assert empty == [] and not list(root.parent.rglob("*.lock")) and not list(root.rglob(".tmp-*"))


class DeltaTarget(Target):
    """A Delta table, read by delta-rs (pyarrow, a partition filter) and by polars' own Delta reader."""

    folder = "delta"
    block: DeltaLakeDestination

    def __init__(self, block: DeltaLakeDestination, uri: str, options: dict[str, str]) -> None:
        super().__init__(block)
        self.uri, self.options = uri, options

    def table(self, name: str = EVENTS_TABLE, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(f"{self.uri}/{name}", version=version, storage_options=self.options)

    def frame(self, day: date) -> pl.DataFrame:
        rows = self.table().to_pyarrow_table(filters=[("day", "=", day.isoformat())])
        return pl.DataFrame(pl.from_arrow(rows))

    def readings(self, day: date) -> list[Reading]:
        scan = pl.scan_delta(f"{self.uri}/{EVENTS_TABLE}", storage_options=self.options or None)
        return [reading(self.frame(day)), reading(scan.filter(pl.col("day") == day.isoformat()).collect())]

    def commit_of(self, day: date) -> dict[str, Any]:
        return next(h for h in self.table().history() if h.get("mp.partition") == day.isoformat())

    def recorded_run(self, day: date) -> str | None:
        return str(self.commit_of(day)["mp.run_id"])

    def held(self, day: date) -> int | None:
        from tasks.warehouses.tableformat import APP_ID

        held: int | None = self.table().transaction_version(f"{APP_ID}/{day.isoformat()}")
        return held

    def holds(self, manifest: Manifest) -> bool:
        """The newest commit of the day carries the manifest's run, rows and fingerprint, and the
        table's transaction records its sequence."""
        commit = self.commit_of(date.fromisoformat(manifest.partition))
        carried = (commit["mp.run_id"], commit["mp.fingerprint"], commit["mp.rows"])
        return (
            carried == (manifest.run_id, manifest.fingerprint, str(manifest.rows))
            and self.held(date.fromisoformat(manifest.partition)) == manifest.sequence
        )

    def increments(self, day: date) -> int:
        return int(self.commit_of(day)["mp.increments"])

    def assert_clean(self, day: date, run: str) -> None:
        pass  # replaced files stay for time travel until upkeep (tests/destinations/test_delta.py)

    def versions(self, table: str) -> Iterator[tuple[str, pl.DataFrame]]:
        from deltalake.exceptions import DeltaError

        for version in range(self.table(table).version() + 1):
            try:
                rows = self.table(table, version).to_pyarrow_table()
            except (OSError, DeltaError):  # its files were removed: no reader can travel to it
                continue
            yield f"{table} version {version}", pl.DataFrame(pl.from_arrow(rows))


class IcebergTarget(Target):
    """An Iceberg table through a reader's own catalog on the same tables: pyiceberg and polars."""

    folder = "iceberg"
    block: IcebergDestination

    def __init__(
        self, block: IcebergDestination, properties: dict[str, str], polars_options: dict[str, str] | None
    ) -> None:
        super().__init__(block)
        self.properties, self.polars_options = properties, polars_options

    def table(self, name: str = EVENTS_TABLE) -> Any:
        from pyiceberg.catalog import load_catalog

        return load_catalog("mixpanel", **self.properties).load_table(("mixpanel", name))

    def frame(self, day: date) -> pl.DataFrame:
        rows = self.table().scan(row_filter=f"day == '{day.isoformat()}'").to_arrow()
        return pl.DataFrame(pl.from_arrow(rows))

    def readings(self, day: date) -> list[Reading]:
        scan = pl.scan_iceberg(self.table(), storage_options=self.polars_options)
        return [reading(self.frame(day)), reading(scan.filter(pl.col("day") == day.isoformat()).collect())]

    def commits(self) -> list[dict[str, str]]:
        """Each snapshot's summary, oldest first."""
        return [s.summary.additional_properties for s in self.table().snapshots() if s.summary]

    def commit_of(self, day: date) -> dict[str, str]:
        return [c for c in self.commits() if c.get("mp.partition") == day.isoformat()][-1]

    def recorded_run(self, day: date) -> str | None:
        return self.commit_of(day)["mp.run_id"]

    def held(self, day: date) -> int | None:
        """What the table records as held for this destination (the property keyed by its location)."""
        from tasks.warehouses.iceberg_format import HELD
        from tasks.warehouses.table_identity import owner_key

        assert isinstance(self.block, IcebergDestination)
        own = owner_key(self.block.files.table_location(1, "iceberg", "iceberg").uri)
        value = self.table().properties.get(f"{HELD}{own}.{day.isoformat()}")
        return None if value is None else int(value)

    def holds(self, manifest: Manifest) -> bool:
        """The newest snapshot of the day carries the manifest's run, rows and fingerprint, and the
        table's properties record its sequence for this destination."""
        day = date.fromisoformat(manifest.partition)
        commit = self.commit_of(day)
        carried = (commit["mp.run_id"], commit["mp.fingerprint"], commit["mp.rows"])
        return (
            carried == (manifest.run_id, manifest.fingerprint, str(manifest.rows))
            and self.held(day) == manifest.sequence
        )

    def increments(self, day: date) -> int:
        return int(self.commit_of(day)["mp.increments"])

    def assert_clean(self, day: date, run: str) -> None:
        pass  # replaced files stay for time travel until upkeep (tests/destinations/test_iceberg.py)

    def versions(self, table: str) -> Iterator[tuple[str, pl.DataFrame]]:
        current = self.table(table)
        for snapshot in current.snapshots():  # every snapshot time travel can still reach
            rows = current.scan(snapshot_id=snapshot.snapshot_id).to_arrow()
            yield f"{table} snapshot {snapshot.snapshot_id}", pl.DataFrame(pl.from_arrow(rows))

    def objects(self) -> list[tuple[str, bytes]]:
        return [(k, b) for k, b in super().objects() if not k.endswith("catalog.db")]


class WarehouseTarget(Target):
    """A warehouse, read back with its own SQL."""

    def __init__(self, warehouse: Warehouse) -> None:
        super().__init__(warehouse.block)
        self.warehouse = warehouse
        self.exact = warehouse.exact_json

    def readings(self, day: date) -> list[Reading]:
        w = self.warehouse
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        rows = w.query(
            f"SELECT event_name, {w.as_text} FROM mp_master_event WHERE time >= {w.mark} AND time < {w.mark}",
            [start, start + timedelta(days=1)],
        )
        return [fingerprint(rows, self.exact)]

    def recorded_run(self, day: date) -> str | None:
        w = self.warehouse
        found = w.query(
            f"SELECT run_id FROM _mp_manifests WHERE table_name = {w.mark} AND partition = {w.mark}",
            [EVENTS_TABLE, day.isoformat()],
        )
        return found[0][0] if found else None


class SpectrumTarget(Target):
    """Redshift Spectrum: what its Glue partition names (a symlink manifest of Parquet files) is the day."""

    def hook(self) -> Any:
        (hook,) = self.destination().hooks
        assert isinstance(hook, WarehouseHook)
        return hook.loader

    def readings(self, day: date) -> list[Reading]:
        dest = self.destination()
        location = self.hook().partitions(EVENTS_TABLE)[day.isoformat()]
        prefix = dest.describe("")
        listed = dest.storage.get_bytes(location[len(prefix) :] + "symlink.txt")
        assert listed is not None, f"no symlink manifest at {location}"
        files = [dest.storage.get_bytes(uri[len(prefix) :]) or b"" for uri in listed.decode().splitlines()]
        return [reading(pl.concat([pl.read_parquet(io.BytesIO(f)) for f in files]))]

    def recorded_run(self, day: date) -> str | None:
        run: str | None = self.hook().loaded_run(EVENTS_TABLE, day.isoformat())
        return run


# ---- the stores, and the table formats on each store they support --------------------------------


def files_block(
    store: str, request: pytest.FixtureRequest | None, tmp_path: Path, proxied: bool = True
) -> BucketDestination:
    """A file destination on ``store``, on a fresh location (a local one under ``tmp_path/dest``).
    ``proxied=False`` talks to Azurite itself: delta-rs finds an emulator by one address per process
    (blocks/destinations/azure.py), which the fault proxy's port would contradict."""
    if store == "local":
        return LocalDestination(path=str(tmp_path / "dest"), create_missing=True)
    assert request is not None, f"a {store} destination needs its server's fixture"
    if store == "s3":
        return make_s3_destination(request.getfixturevalue("s3_server"), prefix="raw")
    if store == "gcs":
        return make_gcs_destination(request.getfixturevalue("gcs_server"), prefix="raw")
    return make_azure_destination(
        request.getfixturevalue("azure_server"), through_proxy=proxied, prefix="raw"
    )


# the stores each table format is written on, a name each (plus its reader options below, if any);
# GCS is refused by the product (delta-rs writes through GCS's XML API, which no local server serves)
TABLE_FORMAT_STORES = {"delta": ("local", "s3", "azure"), "iceberg": ("local", "s3", "azure")}


def reader_options(
    store: str, request: pytest.FixtureRequest | None, style: str, options: dict[str, str]
) -> dict[str, str]:
    """The options a reader of the table format needs on ``store`` beyond what the product writes with:
    readers go straight to the store server (the fault proxy is for the pipeline's own requests)."""
    if store == "s3":
        assert request is not None
        moto = request.getfixturevalue("s3_server").moto_url
        return options | ({"AWS_ENDPOINT_URL": moto} if style == "delta" else {"s3.endpoint": moto})
    return options


def delta_target(store: str, request: pytest.FixtureRequest | None, tmp_path: Path) -> DeltaTarget:
    files = files_block(store, request, tmp_path, proxied=False)
    block = DeltaLakeDestination(files=files)
    location = files.table_location(1, "delta", "delta")
    return DeltaTarget(block, location.uri, reader_options(store, request, "delta", location.options))


def iceberg_target(store: str, request: pytest.FixtureRequest | None, tmp_path: Path) -> IcebergTarget:
    from tasks.warehouses.iceberg_format import catalog_properties

    files = files_block(store, request, tmp_path, proxied=False)
    location = files.table_location(1, "iceberg", "iceberg")
    if store == "local":  # the default catalog, beside the tables
        catalog_uri = f"sqlite:///{location.uri}/catalog.db"
        block = IcebergDestination(files=files)
    else:
        catalog_uri = f"sqlite:///{tmp_path / 'catalog.db'}"
        block = IcebergDestination(files=files, catalog_uri=catalog_uri)
    options = reader_options(store, request, "iceberg", location.options)
    polars_options = None
    if store != "local":  # polars reads the data files itself, with object_store's option names
        delta_style = reader_options(
            store, request, "delta", files.table_location(1, "iceberg", "delta").options
        )
        polars_options = {k.lower(): v for k, v in delta_style.items()}
    return IcebergTarget(block, catalog_properties("sql", catalog_uri, location.uri, options), polars_options)


def local_delta(tmp_path: Path) -> DeltaTarget:
    """Delta on a local folder (``tmp_path/dest``), for the tests of Delta's own quirks."""
    return delta_target("local", None, tmp_path)


def local_iceberg(tmp_path: Path) -> IcebergTarget:
    """Iceberg on a local folder (``tmp_path/dest``) with its default catalog beside the tables."""
    return iceberg_target("local", None, tmp_path)


def warehouse_target(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return WarehouseTarget(WAREHOUSES[name](tmp_path, request))


def spectrum_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    server: S3Server = request.getfixturevalue("s3_server")
    block = RedshiftSpectrumDestination(
        s3=make_s3_destination(server, prefix="raw"), glue_database=glue_database(server)
    )
    return SpectrumTarget(block)


# ---- the cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[pytest.FixtureRequest, Path], Target]
    can: frozenset[str]
    cost: int  # 0: in process, 1: a shared store server, 2: a warehouse emulator
    kill_points: tuple[KillPoint, ...] = field(default=())


def _file_case(store: str) -> Case:
    def build(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
        return FileTarget(files_block(store, request, tmp_path))

    can = {DAYS, KILL} | ({RACE, HOURLY} if store == "local" else set())
    return Case(store, build, frozenset(can), 0 if store == "local" else 1, FILE_POINTS)


def _format_case(fmt: str, store: str) -> Case:
    make = delta_target if fmt == "delta" else iceberg_target

    def build(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
        return make(store, request, tmp_path)

    can = frozenset({DAYS, KILL, RACE, VERSIONS} | ({HOURLY} if store == "local" else set()))
    return Case(f"{fmt}-{store}", build, can, 0 if store == "local" else 1, (FORMAT_POINT,))


def _warehouse_case(name: str) -> Case:
    def build(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
        return warehouse_target(name, request, tmp_path)

    # fakesnow keeps a SIGKILLed client's transaction open and answers HTTP 500 to every later query:
    # a limit of the stand-in, not of Snowflake; its load failing midway is tests/destinations/test_warehouses.py's
    can = {DAYS} if name == "snowflake" else {DAYS, KILL}
    return Case(name, build, frozenset(can), 0 if name == "duckdb" else 2, (LOAD_POINT,))


CASES: list[Case] = [
    *(_file_case(store) for store in ("local", "s3", "gcs", "azure")),
    *(_warehouse_case(name) for name in WAREHOUSES),
    Case("spectrum", spectrum_target, frozenset({DAYS}), 1),
    *(_format_case(fmt, store) for fmt, stores in TABLE_FORMAT_STORES.items() for store in stores),
]


def cases(*needs: str, most: int = 2) -> list[Any]:
    """The cases that can do all of ``needs`` and start at most what ``most`` allows, as pytest params."""
    return [pytest.param(c, id=c.id) for c in CASES if set(needs) <= c.can and c.cost <= most]


def kill_cases(most: int = 2) -> list[Any]:
    """Each case that can be killed, with each of its kill points."""
    return [
        pytest.param(c, p, id=f"{c.id}-{p.name}")
        for c in CASES
        if KILL in c.can and c.cost <= most
        for p in c.kill_points
    ]


def rows_in_files(files: list[tuple[str, bytes]], rows_of: pl.Expr, ids: set[str]) -> list[str]:
    """The objects that still hold a row matching ``rows_of`` (Parquet) or name one of ``ids`` (others)."""
    found = []
    for name, data in files:
        if name.endswith(".parquet"):
            frame = pl.DataFrame(pl.from_arrow(pq.read_table(io.BytesIO(data))))
            if "event_name" in frame.columns and frame.filter(rows_of).height:
                found.append(name)
            for column in {"distinct_id", "resolved_distinct_id"} & set(frame.columns):
                if frame[column].is_in(list(ids)).any():
                    found.append(name)
        elif any(i.encode() in data for i in ids):
            found.append(name)
    return found
