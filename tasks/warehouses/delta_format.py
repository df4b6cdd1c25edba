"""Delta Lake tables through delta-rs (``deltalake``), on a local folder or an object store.

Layout: ``<root>/<project_id>/delta/<table>/`` with ``_delta_log/``; ``mp_master_event`` is
partitioned by ``day`` (``YYYY-MM-DD`` in the project's calendar, the partition of its manifest).

* a day is replaced with ``write_deltalake(mode="overwrite", predicate="day = '…'")``: one commit
  that removes the day's files and adds the new ones; an hourly increment is one ``append`` commit;
  people and mappings are overwritten whole.
* every commit carries the manifest's fields as ``custom_metadata`` (visible in ``history()``) and
  an application transaction ``txn(appId="mixpanel-pipelines/<partition>", version=<sequence>)``:
  ``transaction_version`` tells which manifest version the table holds, atomically with the data.
* concurrency: delta-rs commits a version with a create-if-absent put of ``_delta_log/N.json``
  (S3 conditional writes; ``AWS_S3_ALLOW_UNSAFE_RENAME`` is never set). A writer that loses the race
  re-checks for logical conflicts: two replaces of the same day conflict (one raises and is retried
  from the newest manifest by ``FormatDestination``), writes of different days both commit.
* one identity per table (``table_identity``): a Delta table is found by its path, which is this
  destination's own location, and the table delta-rs opens there is checked to be located at it;
  so the app transactions (``txn``) it holds were written by this (root, project) only and need no key.
* files no log version references (a writer that lost its commit race, a crashed one) are removed
  by the upkeep once older than ``ORPHAN_GRACE_HOURS`` and the retention (delta-rs' full vacuum,
  by modification time), so a writer still uploading its files is never robbed of them.
* statistics are kept for ``day`` and ``time`` only (``delta.dataSkippingStatsColumns``), so the
  log never holds a distinct_id as a min/max value a GDPR purge would have to chase.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import Transaction

from tasks.errors import FatalError
from tasks.lake.manifest import Manifest
from tasks.schema import EVENTS_TABLE, MAPPINGS_TABLE, PEOPLE_TABLE, is_day
from tasks.warehouses.table_identity import check_location
from tasks.warehouses.tableformat import APP_ID, DAY, Location, commit_metadata

log = logging.getLogger(__name__)

STATS_COLUMNS = f"{DAY},time"
# after a purge, files that no log version references are deleted once older than this: a writer
# that is uploading its files right now is younger, so its coming commit never points at a gap
ORPHAN_GRACE_HOURS = 1
# delta-rs buffers a whole row group before writing it (arrow-rs default: 1M rows, a whole day of
# ~1 KB events in memory); 16k-row groups (~18 MiB of ~1.1 KB events) keep the writer's memory flat
# (the day's write alone, 1M events: +212 MiB over the imports with them, +256 MiB with 64k-row
# groups), zstd as our own Parquet files. The file size does not change the memory (targets of 32 to
# 256 MB: peaks within 8 MiB of each other).
WRITER = WriterProperties(max_row_group_size=16_384, compression="ZSTD")


class DeltaFormat:
    name = "Delta Lake"
    conflicts: tuple[type[BaseException], ...] = (CommitFailedError,)

    def __init__(self, location: Location, retention_hours: int, target_file_mb: int = 128) -> None:
        self.location = location
        self.retention_hours = retention_hours
        self.target_file_size = target_file_mb * 1024 * 1024

    def _configuration(self) -> dict[str, str | None]:
        interval = f"interval {self.retention_hours} hours"
        return {
            "delta.dataSkippingStatsColumns": STATS_COLUMNS,
            "delta.deletedFileRetentionDuration": interval,
            "delta.logRetentionDuration": interval,
        }

    def _open(self, table: str) -> DeltaTable | None:
        try:
            found = DeltaTable(self.location.table(table), storage_options=self.location.options)
        except TableNotFoundError:
            return None
        check_location(
            f"the Delta table {table}",
            found.table_uri,
            self.location.table(table),
            "point the block's files at this destination's own folder",
        )
        return found

    def check(self) -> None:
        for table in (EVENTS_TABLE, PEOPLE_TABLE, MAPPINGS_TABLE):
            try:
                self._open(table)
            except (DeltaError, OSError) as exc:
                raise FatalError(
                    f"cannot read the Delta table {self.location.table(table)} ({str(exc).splitlines()[0]}): "
                    "check the file destination's credentials and rights."
                ) from exc

    def _commit(self, manifest: Manifest, partition: str) -> CommitProperties:
        return CommitProperties(
            custom_metadata=commit_metadata(manifest),
            app_transactions=[Transaction(f"{APP_ID}/{partition}", manifest.sequence)],
        )

    def replace(self, table: str, partition: str, manifest: Manifest, data: pa.RecordBatchReader) -> None:
        day = table == EVENTS_TABLE and is_day(partition)
        write_deltalake(
            self.location.table(table),
            data,
            mode="overwrite",
            # a checked ISO date: nothing else reaches the predicate
            predicate=f"{DAY} = '{partition}'" if day else None,
            partition_by=[DAY] if table == EVENTS_TABLE else None,
            configuration=self._configuration(),
            storage_options=self.location.options,
            target_file_size=self.target_file_size,
            writer_properties=WRITER,
            commit_properties=self._commit(manifest, partition),
        )

    def append(self, table: str, partition: str, manifest: Manifest, data: pa.RecordBatchReader) -> None:
        write_deltalake(
            self.location.table(table),
            data,
            mode="append",
            partition_by=[DAY] if table == EVENTS_TABLE else None,
            configuration=self._configuration(),
            storage_options=self.location.options,
            writer_properties=WRITER,
            commit_properties=self._commit(manifest, partition),
        )

    def held(self, table: str, partition: str) -> int | None:
        found = self._open(table)
        return None if found is None else found.transaction_version(f"{APP_ID}/{partition}")

    def forget(self) -> int:
        """Delete the files of removed versions now (not after the retention), and old orphans."""
        removed = 0
        for table in (EVENTS_TABLE, PEOPLE_TABLE, MAPPINGS_TABLE):
            found = self._open(table)
            if found is None:
                continue
            removed += len(found.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False))
            removed += len(
                found.vacuum(
                    retention_hours=ORPHAN_GRACE_HOURS,
                    enforce_retention_duration=False,
                    dry_run=False,
                    full=True,
                )
            )
        return removed

    def upkeep(self) -> dict[str, object]:
        """Compact each table's small files (hourly increments), drop versions past the retention, and
        remove files no version references once no writer can still commit them."""
        report: dict[str, object] = {}
        for table in (EVENTS_TABLE, PEOPLE_TABLE, MAPPINGS_TABLE):
            found = self._open(table)
            if found is None:
                continue
            metrics = found.optimize.compact(target_size=self.target_file_size)
            # the block's retention_hours is the authority (the table property is set at creation only)
            vacuumed = found.vacuum(
                retention_hours=self.retention_hours, enforce_retention_duration=False, dry_run=False
            )
            # a full vacuum keeps removed files within ``retention_hours`` of their removal (the lite
            # one above is the authority on those) and takes the files of no version by their age
            orphans = found.vacuum(
                retention_hours=max(self.retention_hours, ORPHAN_GRACE_HOURS),
                enforce_retention_duration=False,
                dry_run=False,
                full=True,
            )
            found.cleanup_metadata()
            report[table] = {
                "files_compacted": metrics.get("numFilesRemoved", 0),
                "files_vacuumed": len(vacuumed),
                "orphans_removed": len(orphans),
                "version": found.version(),
                "at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            }
        return report
