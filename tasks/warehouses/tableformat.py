"""Open table formats (Delta Lake, Iceberg) as destinations: the committed files, then one format commit.

A table-format destination is a file destination (the staging lake: the same layout, manifests and
compare-and-swap commits as any bucket) with a ``TableFormatHook``: a commit hook of the lake that
holds the same partitions in a Delta or Iceberg table. Every committed partition is then written into the table in ONE format
commit: an event day replaces the rows of its ``day`` partition (an overwrite with a predicate on
that day), an hourly increment is appended, people and identity tables are overwritten whole.

Ordering and crashes: the manifest is switched first, then the table is committed. The format commit
carries the manifest's sequence number as an application transaction (Delta ``txn`` action / an
Iceberg table property written in the same commit), so "which version of the day does the table
hold" is answered atomically with the data. ``repair`` (run by every flow before it touches a
partition) reloads any partition whose table version differs from its manifest: a crash between the
two commits, a load that failed, or a slower racing run that loaded an older version last. The
reload is idempotent (a replace of the day), so the table always converges on the manifest and each
day in it is always one complete version.
"""

from __future__ import annotations

import ctypes
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import ConcurrentCommitError
from tasks.lake.commit import At, Lake
from tasks.lake.committed import local_committed, read_committed
from tasks.lake.files import FileFormat, event_batches
from tasks.lake.manifest import Manifest, ManifestFile
from tasks.schema import (
    EVENTS_SCHEMA,
    EVENTS_TABLE,
    MAPPINGS_SCHEMA,
    MAPPINGS_TABLE,
    PEOPLE_SCHEMA,
    PEOPLE_TABLE,
    is_day,
)

log = logging.getLogger(__name__)

DAY = "day"
APP_ID = "mixpanel-pipelines"
# retries of a format commit that lost a race with another writer of the same table
COMMIT_ATTEMPTS = 6
# The rows are handed to the table format in batches of about this many (uncompressed) bytes:
# delta-rs keeps a number of input batches in flight, so its memory follows the batch size (the
# Delta write of a 1M-event day alone: +503 MiB over the imports with 8k-row (~9 MiB) batches,
# +256 MiB with ~2 MiB ones; Iceberg regroups them into row groups, see ROW_GROUP_BYTES)
BATCH_BYTES = 2 * 1024 * 1024
MIN_BATCH_ROWS = 64


def release_memory() -> None:
    """Give memory freed but kept by the allocators (Arrow's pool, glibc's heap) back to the system.

    Measured on a 1M-event day: the export leaves ~40-80 MiB free but resident, which the format
    write then adds its own to (Delta peak 594-617 MiB without this, 536-539 MiB with it).
    """
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _libc_trim() -> Callable[[int], int] | None:
    try:  # glibc only (musl, macOS: nothing to trim this way)
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _libc_trim()


def _plain(schema: pa.Schema) -> pa.Schema:
    """The schema without field metadata (``format: json``), which table formats do not carry."""
    return pa.schema([pa.field(f.name, f.type) for f in schema])


SCHEMAS: dict[str, pa.Schema] = {
    EVENTS_TABLE: _plain(EVENTS_SCHEMA).append(pa.field(DAY, pa.string())),
    PEOPLE_TABLE: _plain(PEOPLE_SCHEMA),
    MAPPINGS_TABLE: _plain(MAPPINGS_SCHEMA),
}


# which library reads a location's options: delta-rs (object_store's keys) or pyiceberg (FileIO properties)
Style = Literal["delta", "iceberg"]


@dataclass(frozen=True)
class Location:
    """Where a project's tables live: a root URI and the storage options to reach it."""

    uri: str  # a local folder, s3://bucket/<root>/<project_id>/<format>, az:// or abfs://container/…
    options: dict[str, str] = field(default_factory=dict, repr=False)  # holds secrets: never printed

    def table(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"


def commit_metadata(manifest: Manifest) -> dict[str, str]:
    """What the manifest records about the version, as text: kept in the format commit's metadata."""
    values: dict[str, object] = {
        "mp.table": manifest.table,
        "mp.partition": manifest.partition,
        "mp.sequence": manifest.sequence,
        "mp.run_id": manifest.run_id,
        "mp.flow_run_id": manifest.flow_run_id,
        "mp.rows": manifest.rows,
        "mp.fingerprint": manifest.fingerprint,
        "mp.max_processing_time_ms": manifest.max_processing_time_ms,
        "mp.source_from_date": manifest.source_from_date,
        "mp.source_to_date": manifest.source_to_date,
        "mp.event_names": ",".join(manifest.event_names) if manifest.event_names is not None else None,
        "mp.where": manifest.where,
        "mp.increments": manifest.increments,
        "mp.exported_at": manifest.exported_at,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


class TableFormat(Protocol):
    """One table format over one project's tables."""

    name: str
    conflicts: tuple[type[BaseException], ...]  # a commit lost to another writer: retry

    def check(self) -> None:
        """Fail with one sentence if the tables cannot be written."""
        ...

    def replace(self, table: str, partition: str, manifest: Manifest, data: pa.RecordBatchReader) -> None:
        """Replace the partition (a day, or the whole table) with ``data`` in one commit."""
        ...

    def append(self, table: str, partition: str, manifest: Manifest, data: pa.RecordBatchReader) -> None:
        """Add ``data`` to the day in one commit; the day then holds ``manifest``'s version."""
        ...

    def held(self, table: str, partition: str) -> int | None:
        """The manifest sequence the table holds for the partition (None: never written)."""
        ...

    def forget(self) -> int:
        """Physically remove every file no current version references (after a GDPR purge)."""
        ...

    def upkeep(self) -> dict[str, object]:
        """Compact small files and remove versions older than the retention."""
        ...


class TableFormatHook:
    """A commit hook of the lake: each committed partition written into ``table_format`` in one commit."""

    def __init__(self, table_format: TableFormat) -> None:
        self.table_format = table_format

    def committed(self, at: At, manifest: Manifest, base: Manifest | None) -> None:
        lake, table, partition = at.lake, at.table, at.partition
        release_memory()  # what the export freed, before the format write allocates its own
        if base is None or self.table_format.held(table, partition) != base.sequence:
            self.load(lake, table, partition, manifest)  # a replace, or the table is not at the base
            return
        committed = set(base.files)
        added = [f for f in manifest.files if f not in committed]  # an hourly increment: append its files
        try:
            self.table_format.append(
                table, partition, manifest, reader(lake, table, partition, manifest, added)
            )
        except Exception as exc:
            if not self._lost(exc, lake, table, partition, manifest):
                raise
            log.info("%s %s: append lost a race, replacing the day", table, partition)
        self._converge(lake, table, partition)

    def repaired(self, at: At, manifest: Manifest | None) -> None:
        self._converge(at.lake, at.table, at.partition)

    def forget(self) -> int:
        return self.table_format.forget()

    def load(self, lake: Lake, table: str, partition: str, manifest: Manifest) -> None:
        """Write ``manifest``'s version into the table, then make sure the newest manifest is the one held."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                self.table_format.replace(
                    table, partition, manifest, reader(lake, table, partition, manifest, manifest.files)
                )
                break
            except Exception as exc:
                if not self._lost(exc, lake, table, partition, manifest):
                    raise
                # another writer committed the same rows' partition meanwhile: start from the newest manifest
                log.info("%s %s: format commit lost a race (attempt %d)", table, partition, attempt + 1)
                newest = lake.manifest(table, partition)
                if newest is None or self.table_format.held(table, partition) == newest.sequence:
                    return
                manifest = newest
        else:
            raise ConcurrentCommitError(
                f"{table} {partition}: the {self.table_format.name} commit lost {COMMIT_ATTEMPTS} races in a row; "
                "the files are committed and the next run's repair writes the table."
            )
        self._converge(lake, table, partition)

    def _converge(self, lake: Lake, table: str, partition: str) -> None:
        """A slower racing run may have loaded an older version last: reload the manifest's."""
        for _ in range(COMMIT_ATTEMPTS):
            manifest = lake.manifest(table, partition)
            if manifest is None or self.table_format.held(table, partition) == manifest.sequence:
                return
            try:
                self.table_format.replace(
                    table, partition, manifest, reader(lake, table, partition, manifest, manifest.files)
                )
            except Exception as exc:
                if not self._lost(exc, lake, table, partition, manifest):
                    raise

    def _lost(self, exc: Exception, lake: Lake, table: str, partition: str, manifest: Manifest) -> bool:
        """Whether a failed write of ``manifest`` lost a race: the format commit was refused, or a
        newer manifest was committed meanwhile (its run removed this version's files as they were read).
        """
        if isinstance(exc, self.table_format.conflicts):
            return True
        newest = lake.manifest(table, partition)
        return newest is not None and newest.sequence != manifest.sequence


def format_hook(lake: Lake) -> TableFormatHook | None:
    """The table-format hook of a destination, if it has one."""
    return next((h for h in lake.hooks if isinstance(h, TableFormatHook)), None)


def reader(
    lake: Lake,
    table: str,
    partition: str,
    manifest: Manifest,
    files: Sequence[ManifestFile],
) -> pa.RecordBatchReader:
    """The rows of ``files`` in the table's schema, one file at a time, in batches of ~``BATCH_BYTES``.

    Memory stays bounded whatever the size of the day: a local file is read in place, a file in a
    bucket is downloaded to a temporary file first, and each is read one row group at a time.
    """
    schema = SCHEMAS[table]
    day = table == EVENTS_TABLE and is_day(partition)

    def shaped(rows: pa.Table, batch_rows: int) -> Iterator[pa.RecordBatch]:
        if day:
            rows = rows.append_column(DAY, pa.array([partition] * rows.num_rows, pa.string()))
        yield from rows.select(schema.names).cast(schema).to_batches(max_chunksize=batch_rows)

    def batches() -> Iterator[pa.RecordBatch]:
        for item in files:
            if manifest.format != FileFormat.PARQUET:  # jsonl.gz event files: decoded as purges do
                for frame in event_batches(
                    read_committed(lake.storage, item.key), FileFormat(manifest.format)
                ):
                    rows = frame.to_arrow()
                    yield from shaped(rows, _batch_rows(rows.nbytes, rows.num_rows))
                continue
            with tempfile.TemporaryDirectory(prefix="mp-format-") as folder:
                local = local_committed(lake.storage, item.key, Path(folder) / "part.parquet")
                # pre_buffer (pyarrow's default) reads every column chunk of the file ahead: for a
                # 1M-event file ~150 MiB more than reading one row group at a time
                source = pq.ParquetFile(local, pre_buffer=False)
                meta = source.metadata
                raw = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
                batch_rows = _batch_rows(raw, meta.num_rows)
                for batch in source.iter_batches(batch_size=batch_rows):
                    yield from shaped(pa.Table.from_batches([batch]), batch_rows)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _batch_rows(size: int, rows: int) -> int:
    """Rows of a batch of about ``BATCH_BYTES``, for rows of ``size / rows`` bytes on average."""
    return max(MIN_BATCH_ROWS, BATCH_BYTES * rows // max(size, 1))
