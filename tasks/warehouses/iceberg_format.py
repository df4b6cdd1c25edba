"""Apache Iceberg tables through pyiceberg, behind a SQL (SQLite), Glue or REST catalog.

Layout: the tables ``<namespace>.mp_master_event`` (partitioned by identity ``day``),
``mp_people_data`` and ``mp_identity_mappings_data``, each at ``<root>/<project_id>/iceberg/<table>``.

* one identity per table (``table_identity``): every table the catalog finds by name is checked to be
  located at ``<root>/<project_id>/iceberg/<table>`` before it is used; one found elsewhere (another
  destination's, sharing the catalog and namespace) is refused, never written, expired or cleaned.
* a day is replaced by one transaction: a delete of ``day == '…'`` and an append of the day's new
  data files (as ``overwrite`` does, but the files are written streaming: ``_data_files``) plus the
  table property ``mp.held.<owner key>.<partition> = <manifest sequence>`` (keyed by this
  destination's location: another's is never read; the unkeyed ``mp.held.<partition>`` of tables
  written before the key existed is moved to the keyed name at connect), committed to the catalog together
  (the SQL catalog swaps the metadata pointer with a conditional ``UPDATE``, Glue with its version
  check, REST with its requirements): a racing writer gets ``CommitFailedException`` and is retried
  by ``FormatDestination`` from the newest manifest. An hourly increment is one ``append``.
* every snapshot's summary carries the manifest's fields (``mp.run_id``, ``mp.fingerprint``, …).
* column metrics are off (``write.metadata.metrics.default=none``): manifests never hold an id as
  a lower/upper bound, so after a purge only data files can hold a deleted user, and those go.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NoSuchNamespaceError,
    NoSuchTableError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo
from pyiceberg.io import FileIO, OutputFile
from pyiceberg.io.fileformat import FileFormatFactory, FileFormatWriter
from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _to_requested_schema, pyarrow_to_schema
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionField, PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import sanitize_column_names
from pyiceberg.table import DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE, Table, TableProperties, Transaction
from pyiceberg.table.locations import load_location_provider
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record
from pyiceberg.utils.config import Config
from pyiceberg.utils.properties import property_as_int

from tasks.errors import FatalError
from tasks.lake.manifest import Manifest
from tasks.lake.store import Store
from tasks.schema import EVENTS_TABLE, is_day
from tasks.warehouses.table_identity import check_location, located_at, normal_location, owner_key
from tasks.warehouses.tableformat import DAY, SCHEMAS, Location, commit_metadata

log = logging.getLogger(__name__)

HELD = "mp.held."
# Arrow bytes of a row group of the data files: what a write holds in memory (with its encoding)
ROW_GROUP_BYTES = 32 * 1024 * 1024
COMPACT_MIN_FILES = 4  # a day with this many small files (hourly increments) is rewritten by the upkeep
SMALL_FILE_BYTES = 8 * 1024 * 1024  # below a chunk of the daily write: only increments count
ORPHAN_GRACE = timedelta(hours=1)  # a writer uploading right now is younger: its files are not orphans


class IcebergFormat:
    name = "Iceberg"
    # a catalog commit refused, or pyiceberg finding files a concurrent snapshot added to the day
    conflicts: tuple[type[BaseException], ...] = (CommitFailedException, ValidationException)

    def __init__(
        self,
        catalog: Catalog,
        namespace: str,
        location: Location,
        store: Store,
        prefix: str,
        retention_hours: int,
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self.location = location
        self.store = store  # the same root as ``location``: orphan files are listed and deleted through it
        self.prefix = prefix.rstrip("/") + "/"  # ``<project_id>/iceberg/``, relative to the store
        self.retention = timedelta(hours=retention_hours)
        self.held_prefix = f"{HELD}{owner_key(location.uri)}."  # what this destination's table holds

    def _properties(self) -> dict[str, str]:
        return {
            "write.metadata.metrics.default": "none",
            "write.metadata.delete-after-commit.enabled": "true",
            "write.metadata.previous-versions-max": "10",
            "history.expire.max-snapshot-age-ms": str(int(self.retention.total_seconds() * 1000)),
        }

    def _table(self, name: str, create: bool = False) -> Table | None:
        identifier = (self.namespace, name)
        try:
            return self._own(name, self.catalog.load_table(identifier))
        except NoSuchTableError:
            if not create:
                return None
        schema = Catalog._convert_schema_if_needed(SCHEMAS[name])  # field ids assigned, as create does
        spec = PartitionSpec()
        if name == EVENTS_TABLE:
            day_id = schema.find_field(DAY).field_id
            spec = PartitionSpec(PartitionField(day_id, 1000, IdentityTransform(), DAY))
        created = self.catalog.create_table_if_not_exists(  # another writer's table, if it won the race
            identifier,
            schema,
            location=self.location.table(name),
            partition_spec=spec,
            properties=self._properties(),
        )
        return self._own(name, created)

    def _own(self, name: str, table: Table) -> Table:
        check_location(
            f"the Iceberg table {self.namespace}.{name}",
            table.metadata.location,
            self.location.table(name),
            "give this block another namespace (or catalog), or drop that table from the catalog",
        )
        return table

    def _migrate(self, table: Table) -> None:
        """Unkeyed ``mp.held.<partition>`` (written before the key existed) moved to this destination's key.

        Only reached once ``_own`` has found the table at this destination's location: the
        unkeyed values were written by a destination of this same root and project.
        """
        old = {k: v for k, v in table.properties.items() if k.startswith(HELD) and "." not in k[len(HELD) :]}
        if not old:
            return
        keyed = {
            f"{self.held_prefix}{k[len(HELD) :]}": v
            for k, v in old.items()
            if f"{self.held_prefix}{k[len(HELD) :]}" not in table.properties
        }
        try:
            with table.transaction() as tx:
                if keyed:
                    tx.set_properties(keyed)
                tx.remove_properties(*old)
        except self.conflicts:
            log.info("%s: written meanwhile, its held properties are moved at the next connect", table.name())

    def check(self) -> None:
        try:
            self.catalog.create_namespace_if_not_exists(self.namespace)
            for name in SCHEMAS:
                found = self._table(name, create=True)
                assert found is not None
                self._migrate(found)
        except (OSError, ValueError) as exc:
            raise FatalError(
                f"cannot create the Iceberg tables in namespace {self.namespace} at {self.location.uri} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): check the catalog "
                "settings and the file destination's rights."
            ) from exc

    def _write(
        self, table: str, partition: str, manifest: Manifest, data: pa.RecordBatchReader, append: bool
    ) -> None:
        found = self._table(table, create=True)
        assert found is not None
        meta = commit_metadata(manifest)
        with warnings.catch_warnings(), found.transaction() as tx:
            # the first write of a day deletes nothing, which pyiceberg warns about
            warnings.filterwarnings("ignore", "Delete operation did not match any records")
            if table == EVENTS_TABLE and (append or is_day(partition)):
                _write_rows(tx, found.io, data, partition, None if append else day_is(partition), meta)
            else:  # people and mappings: unpartitioned, replaced whole
                _write_rows(tx, found.io, data, None, AlwaysTrue(), meta)
            tx.set_properties({f"{self.held_prefix}{partition}": str(manifest.sequence)})

    def replace(self, table: str, partition: str, manifest: Manifest, data: pa.RecordBatchReader) -> None:
        self._write(table, partition, manifest, data, append=False)

    def append(self, table: str, partition: str, manifest: Manifest, data: pa.RecordBatchReader) -> None:
        self._write(table, partition, manifest, data, append=True)

    def held(self, table: str, partition: str) -> int | None:
        found = self._table(table)
        value = None if found is None else found.properties.get(f"{self.held_prefix}{partition}")
        return None if value is None else int(value)

    def forget(self) -> int:
        """Expire every snapshot but the current one, then delete every file it no longer reaches."""
        return sum(self._expire(name, datetime.now(tz=UTC), ORPHAN_GRACE) for name in SCHEMAS)

    def upkeep(self) -> dict[str, object]:
        """Rewrite days of many small files, expire snapshots older than the retention, remove their files."""
        compacted = self._compact()
        cutoff = datetime.now(tz=UTC) - self.retention
        report: dict[str, object] = {"days_compacted": compacted}
        return report | {
            name: {"files_removed": self._expire(name, cutoff, max(self.retention, ORPHAN_GRACE))}
            for name in SCHEMAS
        }

    def _compact(self) -> int:
        """Each day holding ``COMPACT_MIN_FILES`` small files or more rewritten as one overwrite of itself.

        The day's manifest version (``mp.held.<day>``) is unchanged: the rows are the same. A pipeline
        commit of that day in between makes pyiceberg refuse the rewrite (files added under the
        filter), so a compaction never brings an older version back.
        """
        table = self._table(EVENTS_TABLE)
        if table is None or table.current_snapshot() is None:
            return 0
        files = pl.from_arrow(table.inspect.files().select(["partition", "file_size_in_bytes"]))
        small = files.unnest("partition").filter(pl.col("file_size_in_bytes") < SMALL_FILE_BYTES)  # type: ignore[union-attr]
        days = small.group_by(DAY).len().filter(pl.col("len") >= COMPACT_MIN_FILES)
        done = 0
        for day in sorted(days[DAY].to_list()):
            rows = table.scan(row_filter=day_is(day)).to_arrow_batch_reader()
            try:
                with table.transaction() as tx:
                    _write_rows(tx, table.io, rows, day, day_is(day), {"mp.compaction": day})
                done += 1
            except self.conflicts:
                log.info("%s: written by a pipeline run during compaction, left for the next upkeep", day)
            table = self._table(EVENTS_TABLE)
            assert table is not None
        return done

    def _expire(self, name: str, older_than: datetime, orphan_age: timedelta) -> int:
        table = self._table(name)
        if table is None:
            return 0
        before = _reachable(table.io, table)
        current = table.current_snapshot()
        doomed = [
            s.snapshot_id
            for s in table.snapshots()
            if current is None or s.snapshot_id != current.snapshot_id
        ]
        doomed = [s for s in doomed if _snapshot_time(table, s) < older_than]
        if doomed:
            table.maintenance.expire_snapshots().by_ids(doomed).commit()
            table = self._table(name)
            assert table is not None
        after = _reachable(table.io, table) | {table.metadata_location}
        folder = f"{self.prefix}{name}/"
        young = datetime.now(tz=UTC) - orphan_age
        unreferenced = []
        for info in self.store.list(folder):
            uri = f"{self.location.uri.rstrip('/')}/{info.key[len(self.prefix) :]}"
            if _normal(uri) in after:
                continue
            # files of expired snapshots go now; other strays only once no writer can still commit them
            if _normal(uri) in before or datetime.fromtimestamp(info.modified, tz=UTC) < young:
                unreferenced.append(info.key)
        self.store.delete(unreferenced)
        return len(unreferenced)


def day_is(day: str) -> BooleanExpression:
    """``day = 'YYYY-MM-DD'``: pyiceberg's pydantic model types its constructor apart from its real one."""
    equal_to: Any = EqualTo  # its pydantic model types the constructor as (term, literal) keywords only
    return cast(BooleanExpression, equal_to(DAY, day))


def _data_files(
    tx: Transaction, io: FileIO, data: pa.RecordBatchReader, day: str | None, write_uuid: uuid.UUID
) -> Iterator[DataFile]:
    """``data`` written as the table's Parquet data files, streamed: never more than a row group in memory.

    pyiceberg 0.12 materialises a partitioned write whole (and even its unpartitioned streaming
    write buffers a whole file, ``write.target-file-size-bytes`` of Arrow data, 512 MiB by
    default). This is its own ``write_file`` with a rolling writer instead: row groups of about
    ``ROW_GROUP_BYTES`` are written as they come, and a file is closed once it holds
    ``write.target-file-size-bytes`` of Arrow data (pyiceberg's measure, so the files are the size
    pyiceberg would write). ``day``: every row's ``day``, the file's partition (None: unpartitioned).
    It calls pyiceberg internals (``_to_requested_schema``, ``_check_pyarrow_schema_compatible``, the
    ``write_file`` steps): check them when upgrading pyiceberg past the 0.12.0 that uv.lock pins.
    """
    metadata = tx.table_metadata
    table_schema = metadata.schema()
    sanitized = sanitize_column_names(table_schema)
    file_schema = sanitized if sanitized != table_schema else table_schema
    downcast = Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False
    _check_pyarrow_schema_compatible(
        table_schema,
        data.schema,
        downcast_ns_timestamp_to_us=downcast,
        format_version=metadata.format_version,
    )
    data_schema = pyarrow_to_schema(
        data.schema,
        name_mapping=table_schema.name_mapping,
        downcast_ns_timestamp_to_us=downcast,
        format_version=metadata.format_version,
    )
    file_format = FileFormat(
        metadata.properties.get(TableProperties.WRITE_FILE_FORMAT, TableProperties.WRITE_FILE_FORMAT_DEFAULT)
    )
    model = FileFormatFactory.get(file_format)
    target = property_as_int(
        metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    assert target is not None
    spec = metadata.spec()
    key = None
    if day is not None:
        key = PartitionKey([PartitionFieldValue(spec.fields[0], day)], spec, table_schema)
    locations = load_location_provider(metadata.location, metadata.properties)
    counter = itertools.count()

    def open_file() -> tuple[str, OutputFile, FileFormatWriter]:
        name = f"00000-{next(counter)}-{write_uuid}.{model.file_extension()}"
        path = locations.new_data_location(data_file_name=name, partition_key=key)
        output = io.new_output(path)
        return path, output, model.create_writer(output, file_schema, metadata.properties)

    def close_file(path: str, output: OutputFile, writer: FileFormatWriter) -> DataFile:
        statistics = writer.close()
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=file_format,
            partition=key.partition if key is not None else Record(),
            file_size_in_bytes=len(output),
            sort_order_id=None,
            spec_id=metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    current: tuple[str, OutputFile, FileFormatWriter] | None = None
    in_file = 0  # Arrow bytes written into the current file
    for group in _row_groups(data, day):
        if current is None:
            current, in_file = open_file(), 0
        batches = [
            _to_requested_schema(
                requested_schema=file_schema,
                file_schema=data_schema,
                batch=batch,
                downcast_ns_timestamp_to_us=downcast,
                include_field_ids=True,
                format_model=model,
            )
            for batch in group
        ]
        current[2].write(pa.Table.from_batches(batches))
        in_file += sum(b.nbytes for b in group)
        del batches, group
        if in_file >= target:
            yield close_file(*current)
            current = None
    if current is not None:
        yield close_file(*current)


def _bounds(values: pa.Array[Any]) -> tuple[object, object]:
    """The least and the greatest of ``values``."""
    both = pc.min_max(values)
    return both["min"].as_py(), both["max"].as_py()


def _row_groups(data: pa.RecordBatchReader, day: str | None) -> Iterator[list[pa.RecordBatch]]:
    """``data`` in groups of about ``ROW_GROUP_BYTES``; every row checked to be of ``day`` (if given)."""
    held: list[pa.RecordBatch] = []
    size = 0
    for batch in data:
        days = batch.column(DAY) if day is not None and batch.num_rows else None
        if days is not None and (days.null_count or _bounds(days) != (day, day)):
            raise ValueError(f"a row outside the day {day} was written into its partition")
        held.append(batch)
        size += batch.nbytes
        if size >= ROW_GROUP_BYTES:
            yield held
            held, size = [], 0
    if held:
        yield held


def _write_rows(
    tx: Transaction,
    io: FileIO,
    data: pa.RecordBatchReader,
    day: str | None,
    replace: BooleanExpression | None,
    meta: dict[str, str],
) -> None:
    """Replace the rows matching ``replace`` (None: add) with ``data``, in the one transaction.

    The data files are written first (streamed, see ``_data_files``); then a delete of the replaced
    rows (pyiceberg drops whole files: a day is a partition) and one append of the new files, both
    snapshots of the transaction, which commits once. An empty ``data`` only deletes.
    """
    files = list(_data_files(tx, io, data, day, uuid.uuid4()))
    if replace is not None:
        tx.delete(replace, snapshot_properties=meta)
    if files:
        with tx.update_snapshot(snapshot_properties=meta).fast_append() as append:
            for data_file in files:
                append.append_data_file(data_file)


def _snapshot_time(table: Table, snapshot_id: int) -> datetime:
    snapshot = table.snapshot_by_id(snapshot_id)
    assert snapshot is not None
    return datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC)


def _normal(uri: str) -> str:
    return uri.removeprefix("file://")


def _reachable(io: FileIO, table: Table) -> set[str]:
    """Every manifest list, manifest and data file the table's snapshots reach, as normalised URIs."""
    found: set[str] = set()
    for snapshot in table.snapshots():
        found.add(_normal(snapshot.manifest_list))
        for manifest in snapshot.manifests(io):
            found.add(_normal(manifest.manifest_path))
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                found.add(_normal(entry.data_file.file_path))
    return found


def catalog_properties(kind: str, uri: str, warehouse: str, options: dict[str, str]) -> dict[str, Any]:
    """The pyiceberg catalog properties of a ``sql`` (SQLite file), ``glue`` or ``rest`` catalog."""
    base: dict[str, Any] = {"type": kind, "warehouse": warehouse, **options}
    if kind == "sql":
        return base | {"uri": uri, "init_catalog_tables": "true"}
    if kind == "rest":
        return base | {"uri": uri}
    return base


def default_catalog_name(location: Location) -> str:
    """The file name of the default SQLite catalog of a bucket-backed destination: one per (root, project)."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", normal_location(location.uri)).strip("-")[:80]
    return f"{readable}-{owner_key(location.uri)}.db"


def holds_own_tables(catalog: Catalog, namespace: str, location: Location) -> bool:
    """Whether ``catalog`` already registers one of this destination's tables (at its location)."""
    for name in SCHEMAS:
        try:
            table = catalog.load_table((namespace, name))
        except (NoSuchTableError, NoSuchNamespaceError):
            continue
        if located_at(table.metadata.location, location.table(name)):
            return True
    return False
