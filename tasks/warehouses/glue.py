"""Redshift Spectrum (and Athena) over the S3 files: a Glue database whose tables follow the manifests.

Spectrum reads every file under a table's or partition's location, and a day folder briefly holds
two versions during a commit (and a crashed run's orphans until the next repair). So locations
never point at the data folders: each committed partition gets a symlink manifest, a text file that
lists exactly the files of its manifest (``SymlinkTextInputFormat``, which Spectrum and Athena
read), in a folder unique to the run; the Glue partition (an event day, ``mp_date=YYYY-MM-DD``) or
the whole table's location is then switched to that folder in one Glue call, and the previous
folder removed. A query sees the old day or the new one, never a mix.

``publish_status`` writes the status rows as one Parquet file in a new folder under
``_state/spectrum/_mp_sync_status/`` and switches the plain Parquet table ``_mp_sync_status`` to it in
one Glue call (then removes the previous folder): readers see one status or the next. Glue holds no
view Spectrum can read (Athena's views are Presto text Spectrum ignores; Glue's multi-dialect views
need Lake Formation and are created by SQL, not by this API), so ``mp_sync_status`` and
``mp_master_event_resolved`` are queries there (docs/destinations/spectrum.md).

One identity per table: a Glue table found by name is used only if it is located in this
destination's own ``<project>/_state/spectrum/<table>/`` folder (``table_identity``), so the run ids
it records (``mp_run_id``) are this destination's.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from tasks.errors import FatalError
from tasks.lake.store import Store
from tasks.schema import EVENTS_TABLE, SYNC_STATUS_TABLE, TABLE_COLUMNS, is_day, typed_columns
from tasks.warehouses.table_identity import check_location
from tasks.warehouses.warehouse import Partition, checked_identifier, status_columns, status_rows

SYMLINK_INPUT = "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARTITION_KEY = "mp_date"
RUN_PARAMETER = "mp_run_id"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
HIVE_TYPES = {"text": "string", "json": "string", "timestamp": "timestamp", "date": "date", "int64": "bigint"}


class GlueCatalog:
    """The ``Loader`` of a Redshift Spectrum destination: Glue tables and partitions, symlink manifests."""

    def __init__(self, glue: Any, database: str, storage: Store, state_prefix: str) -> None:
        self.glue = glue
        self.database = checked_identifier(database, "Glue database")
        self.storage = storage
        self.state_prefix = state_prefix  # "<project>/_state/spectrum/"

    def check(self) -> None:
        try:
            self.glue.get_database(Name=self.database)
        except ClientError as exc:
            raise self._error(exc, "read the Glue database") from exc
        for table in TABLE_COLUMNS:
            try:
                found = self.glue.get_table(DatabaseName=self.database, Name=table)["Table"]
            except ClientError as exc:
                if _code(exc) != "EntityNotFoundException":
                    raise self._error(exc, f"read the Glue table {table}") from exc
                self._create_table(table)
                continue
            # a whole table's location moves between run folders inside its own folder: ``within``
            check_location(
                f"the Glue table {self.database}.{table}",
                str(found.get("StorageDescriptor", {}).get("Location", "")),
                self.storage.describe(self._own(table)),
                f"drop that table (aws glue delete-table --database-name {self.database} --name {table}) "
                "or choose another Glue database in the block",
                within=True,
            )

    def load(self, partition: Partition) -> None:
        own = self._own(partition.table)
        folder = f"{own}{self._folder(partition)}/{partition.manifest.run_id}/"
        self.storage.put_bytes(folder + "symlink.txt", "".join(f"{uri}\n" for uri in partition.uris).encode())
        location = self.storage.describe(folder)
        try:
            previous = self._switch(partition, location)
        except ClientError as exc:
            raise self._error(exc, f"update {partition.table} {partition.name}") from exc
        old = self._own_folder(previous or "", partition)
        if old is not None and old != folder:
            self.storage.delete(i.key for i in self.storage.list(old))

    def publish_status(self, table: pa.Table) -> None:
        data = io.BytesIO()
        pq.write_table(status_rows(table), data)
        own = self._own(SYNC_STATUS_TABLE)
        try:
            found = self._status_table()
            previous = None if found is None else str(found.get("StorageDescriptor", {}).get("Location", ""))
            if previous is not None:
                check_location(
                    f"the Glue table {self.database}.{SYNC_STATUS_TABLE}",
                    previous,
                    self.storage.describe(own),
                    f"drop that table (aws glue delete-table --database-name {self.database} "
                    f"--name {SYNC_STATUS_TABLE}) or choose another Glue database in the block",
                    within=True,
                )
            folder = f"{own}{uuid.uuid4().hex}/"
            self.storage.put_bytes(folder + "status.parquet", data.getvalue())
            status = _status_input(self.storage.describe(folder))
            if found is None:
                self.glue.create_table(DatabaseName=self.database, TableInput=status)
            else:
                self.glue.update_table(DatabaseName=self.database, TableInput=status)
        except ClientError as exc:
            raise self._error(exc, f"publish {SYNC_STATUS_TABLE}") from exc
        old = self._run_folder(previous or "", own)
        if old is not None and old != folder:
            self.storage.delete(i.key for i in self.storage.list(old))

    def _status_table(self) -> dict[str, Any] | None:
        try:
            return dict(self.glue.get_table(DatabaseName=self.database, Name=SYNC_STATUS_TABLE)["Table"])
        except ClientError as exc:
            if _code(exc) == "EntityNotFoundException":
                return None
            raise

    def _own(self, table: str) -> str:
        return f"{self.state_prefix}{table}/"

    def _own_folder(self, location: str, partition: Partition) -> str | None:
        return self._run_folder(location, f"{self._own(partition.table)}{self._folder(partition)}/")

    def _run_folder(self, location: str, parent: str) -> str | None:
        """The key of a previous location if it is one of our run folders under ``parent``, else None:
        a location elsewhere (another team's objects, the destination itself, the table's initial
        location, which holds the new folder) is never cleaned."""
        root = self.storage.describe("x")[:-1]
        if not location.startswith(root):
            return None
        key = location[len(root) :].rstrip("/") + "/"
        run = key[len(parent) :].rstrip("/")
        if not key.startswith(parent) or not run or "/" in run or run in (".", ".."):
            return None
        return key

    def loaded_run(self, table: str, partition: str) -> str | None:
        try:
            if is_day(partition):
                found = self.glue.get_partition(
                    DatabaseName=self.database, TableName=table, PartitionValues=[partition]
                )["Partition"]
            else:
                found = self.glue.get_table(DatabaseName=self.database, Name=table)["Table"]
        except ClientError as exc:
            if _code(exc) == "EntityNotFoundException":
                return None
            raise self._error(exc, f"read {table} {partition}") from exc
        run: str | None = found.get("Parameters", {}).get(RUN_PARAMETER)
        return run

    def partitions(self, table: str) -> dict[str, str]:
        """Every registered partition of ``table`` and its location (for checks and tests)."""
        pages = self.glue.get_paginator("get_partitions").paginate(
            DatabaseName=self.database, TableName=table
        )
        return {
            p["Values"][0]: p["StorageDescriptor"]["Location"] for page in pages for p in page["Partitions"]
        }

    def _folder(self, partition: Partition) -> str:
        return f"{PARTITION_KEY}={partition.name}" if partition.is_day else "table"

    def _switch(self, partition: Partition, location: str) -> str | None:
        """Point the partition (or the whole table) at ``location``; returns where it pointed before."""
        parameters = {RUN_PARAMETER: partition.manifest.run_id}
        if not partition.is_day:
            table = self.glue.get_table(DatabaseName=self.database, Name=partition.table)["Table"]
            previous: str = table["StorageDescriptor"]["Location"]
            self.glue.update_table(
                DatabaseName=self.database,
                TableInput=_table_input(partition.table, location, parameters, partitioned=False),
            )
            return previous
        value = [partition.name]
        descriptor = _descriptor(partition.table, location)
        try:
            current = self.glue.get_partition(
                DatabaseName=self.database, TableName=partition.table, PartitionValues=value
            )["Partition"]
        except ClientError as exc:
            if _code(exc) != "EntityNotFoundException":
                raise
            self.glue.create_partition(
                DatabaseName=self.database,
                TableName=partition.table,
                PartitionInput={"Values": value, "StorageDescriptor": descriptor, "Parameters": parameters},
            )
            return None
        self.glue.update_partition(
            DatabaseName=self.database,
            TableName=partition.table,
            PartitionValueList=value,
            PartitionInput={"Values": value, "StorageDescriptor": descriptor, "Parameters": parameters},
        )
        return str(current["StorageDescriptor"]["Location"])

    def _create_table(self, table: str) -> None:
        location = self.storage.describe(self._own(table))
        self.glue.create_table(
            DatabaseName=self.database,
            TableInput=_table_input(table, location, {}, partitioned=table == EVENTS_TABLE),
        )

    def _error(self, exc: ClientError, action: str) -> FatalError:
        code = _code(exc)
        if code == "EntityNotFoundException":
            return FatalError(
                f"the Glue database {self.database} does not exist: create it (aws glue create-database "
                f"--database-input Name={self.database}) or fix the name in the block."
            )
        if code in ("AccessDeniedException", "UnrecognizedClientException"):
            return FatalError(
                f"AWS refused to {action} in Glue database {self.database} ({code}): grant the block's "
                "credentials glue:GetDatabase, GetTable, CreateTable, UpdateTable, GetPartition(s), "
                "CreatePartition and UpdatePartition."
            )
        return FatalError(f"Glue failed to {action} in database {self.database} ({code}).")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _descriptor(table: str, location: str) -> dict[str, Any]:
    return {
        "Columns": [{"Name": name, "Type": kind} for name, kind in typed_columns(table, HIVE_TYPES)],
        "Location": location,
        "InputFormat": SYMLINK_INPUT,
        "OutputFormat": TEXT_OUTPUT,
        "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE},
    }


def _status_input(location: str) -> dict[str, Any]:
    """``_mp_sync_status``: a plain Parquet table over its one folder (a folder per publication)."""
    return {
        "Name": SYNC_STATUS_TABLE,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet"},
        "StorageDescriptor": {
            "Columns": [{"Name": name, "Type": kind} for name, kind in status_columns(HIVE_TYPES)],
            "Location": location,
            "InputFormat": PARQUET_INPUT,
            "OutputFormat": PARQUET_OUTPUT,
            "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE},
        },
    }


def _table_input(table: str, location: str, parameters: dict[str, str], partitioned: bool) -> dict[str, Any]:
    return {
        "Name": table,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"EXTERNAL": "TRUE", **parameters},
        "StorageDescriptor": _descriptor(table, location),
        "PartitionKeys": [{"Name": PARTITION_KEY, "Type": "string"}] if partitioned else [],
    }
