"""BigQuery: each partition replaced by one atomic MERGE from a staging table loaded with the day's files.

A load job puts the committed Parquet files into a fresh staging table (``properties`` as STRING), then
one MERGE statement, atomic in BigQuery, deletes the day's rows (``WHEN NOT MATCHED BY SOURCE AND
time in the day``) and inserts the staged rows with ``PARSE_JSON(properties)`` into the JSON column;
a whole table is emptied and refilled the same way. Only then is the manifest recorded in
``_mp_manifests``: if that write fails, the next ``repair`` of the day sees an older run there and
loads the day again, which the MERGE makes idempotent. ``mp_master_event`` is partitioned by day on
``time``. ``publish_status`` stages the status rows the same way and swaps all of ``_mp_sync_status``
with one MERGE. The views (``tables.insert`` with ``exists_ok``: a concurrent check's creation is no
error) name their tables with project and dataset, since a view's body ignores the default dataset.
Dataset and table names are checked identifiers, the project a checked project id; values are query
parameters.
"""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from tasks.errors import BadCredentialsError, FatalError, PermissionDeniedError
from tasks.schema import (
    EVENTS_TABLE,
    MAPPINGS_TABLE,
    RESOLVED_EVENTS_VIEW,
    SYNC_STATUS_SCHEMA,
    SYNC_STATUS_TABLE,
    SYNC_STATUS_VIEW,
    TABLE_COLUMNS,
    typed_columns,
)
from tasks.warehouses.warehouse import (
    STATE_TABLE,
    Partition,
    checked_identifier,
    resolved_events_query,
    status_columns,
    status_rows,
    sync_status_query,
)

TYPES = {"text": "STRING", "json": "JSON", "timestamp": "TIMESTAMP", "date": "DATE", "int64": "INT64"}
STATE_COLUMNS = [
    ("table_name", "STRING"),
    ("partition", "STRING"),
    ("run_id", "STRING"),
    ("rows", "INT64"),
    ("fingerprint", "STRING"),
    ("manifest", "STRING"),
    ("loaded_at", "TIMESTAMP"),
]


# a project id (6-30 lowercase letters, digits, hyphens), optionally domain-scoped (``example.com:id``)
_PROJECT = re.compile(r"^(?:[a-z0-9.-]{1,63}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")


def checked_project(value: str) -> str:
    """The project goes into a view's SQL text (between backticks), so only a valid project id passes."""
    if not _PROJECT.match(value or ""):
        raise FatalError(
            f"BigQuery project {value!r} is not a project id: 6 to 30 lowercase letters, digits and hyphens, "
            "starting with a letter."
        )
    return value


def _schema(table: str, json_as_text: bool = False) -> list[bigquery.SchemaField]:
    if table == STATE_TABLE:
        return [bigquery.SchemaField(name, kind) for name, kind in STATE_COLUMNS]
    if table == SYNC_STATUS_TABLE:
        return [bigquery.SchemaField(name, kind) for name, kind in status_columns(TYPES)]
    types = TYPES | {"json": "STRING"} if json_as_text else TYPES
    return [bigquery.SchemaField(name, kind) for name, kind in typed_columns(table, types)]


class BigQueryLoader:
    def __init__(self, client: bigquery.Client, dataset: str) -> None:
        self.client = client
        self.dataset = checked_identifier(dataset, "BigQuery dataset")
        self.project = checked_project(client.project)

    def check(self) -> None:
        try:
            self.client.get_dataset(self.dataset)
            for table in [*TABLE_COLUMNS, STATE_TABLE, SYNC_STATUS_TABLE]:
                self._ensure(table)
            self._ensure_views()
        except gexc.GoogleAPICallError as exc:
            raise self._error(exc) from exc

    def publish_status(self, table: pa.Table) -> None:
        rows = status_rows(table)
        staging = f"{self.dataset}._mp_status_{uuid.uuid4().hex[:16]}"
        columns = ", ".join(SYNC_STATUS_SCHEMA.names)
        values = ", ".join(f"S.{name}" for name in SYNC_STATUS_SCHEMA.names)
        try:
            self._ensure(SYNC_STATUS_TABLE)
            self._ensure_views()
            self.client.create_table(bigquery.Table(self._ref(staging), schema=_schema(SYNC_STATUS_TABLE)))
            try:
                if rows.num_rows:
                    data = io.BytesIO()
                    pq.write_table(rows, data)
                    data.seek(0)
                    config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET)
                    self.client.load_table_from_file(data, self._ref(staging), job_config=config).result()
                # one statement, atomic: readers see the previous status or this one, never a mix
                self.client.query(
                    f"MERGE {self.dataset}.{SYNC_STATUS_TABLE} T USING (SELECT {columns} FROM {staging}) S "
                    "ON FALSE WHEN NOT MATCHED BY SOURCE THEN DELETE "
                    f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
                ).result()
            finally:
                self.client.delete_table(self._ref(staging), not_found_ok=True)
        except gexc.GoogleAPICallError as exc:
            raise self._error(exc) from exc

    def load(self, partition: Partition) -> None:
        if partition.table not in TABLE_COLUMNS:
            raise FatalError(f"BigQuery has no table {partition.table!r} to load.")
        staging = f"{self.dataset}._mp_load_{uuid.uuid4().hex[:16]}"
        self.client.create_table(bigquery.Table(self._ref(staging), schema=_schema(partition.table, True)))
        try:
            self._stage(partition, staging)
            self._merge(partition, staging)
            self._record(partition)
        except gexc.GoogleAPICallError as exc:
            raise self._error(exc) from exc
        finally:
            self.client.delete_table(self._ref(staging), not_found_ok=True)

    def loaded_run(self, table: str, partition: str) -> str | None:
        rows = list(
            self.client.query(
                f"SELECT run_id FROM {self.dataset}.{STATE_TABLE} WHERE table_name = @t AND partition = @p",
                job_config=_params(t=("STRING", table), p=("STRING", partition)),
            ).result()
        )
        return None if not rows else str(rows[0][0])

    def _ref(self, name: str) -> str:
        return f"{self.client.project}.{name}"

    def _qualified(self, table: str) -> str:
        return f"`{self.project}.{self.dataset}.{table}`"

    def _ensure_views(self) -> None:
        views = {
            RESOLVED_EVENTS_VIEW: resolved_events_query(
                self._qualified(EVENTS_TABLE), self._qualified(MAPPINGS_TABLE)
            ),
            SYNC_STATUS_VIEW: sync_status_query(self._qualified(SYNC_STATUS_TABLE)),
        }
        for name, query in views.items():
            view = bigquery.Table(self._ref(f"{self.dataset}.{name}"))
            view.view_query = query
            self.client.create_table(view, exists_ok=True)

    def _ensure(self, table: str) -> None:
        spec = bigquery.Table(self._ref(f"{self.dataset}.{table}"), schema=_schema(table))
        if table == EVENTS_TABLE:
            spec.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field="time"
            )
        self.client.create_table(spec, exists_ok=True)

    def _stage(self, partition: Partition, staging: str) -> None:
        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET)
        for path in partition.local_paths() if partition.manifest.files else []:
            with path.open("rb") as data:
                self.client.load_table_from_file(data, self._ref(staging), job_config=config).result()

    def _merge(self, partition: Partition, staging: str) -> None:
        table = partition.table  # a key of TABLE_COLUMNS, never user input
        columns = [name for name, _ in TABLE_COLUMNS[table]]
        select = ", ".join(f"PARSE_JSON({c}) AS {c}" if c == "properties" else c for c in columns)
        condition, params = "", _params()
        if partition.is_day:
            start, end = partition.time_range()
            condition = " AND T.time >= @start AND T.time < @end"
            params = _params(start=("TIMESTAMP", start), end=("TIMESTAMP", end))
        sql = (
            f"MERGE {self.dataset}.{table} T USING (SELECT {select} FROM {staging}) S ON FALSE "
            f"WHEN NOT MATCHED BY SOURCE{condition} THEN DELETE "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) VALUES ({', '.join(f'S.{c}' for c in columns)})"
        )
        self.client.query(sql, job_config=params).result()

    def _record(self, partition: Partition) -> None:
        manifest = partition.manifest
        self.client.query(
            f"MERGE {self.dataset}.{STATE_TABLE} T USING (SELECT @t AS table_name, @p AS partition) S "
            "ON T.table_name = S.table_name AND T.partition = S.partition "
            "WHEN MATCHED THEN UPDATE SET run_id = @run, rows = @rows, fingerprint = @fp, manifest = @m, "
            "loaded_at = CURRENT_TIMESTAMP() "
            "WHEN NOT MATCHED THEN INSERT (table_name, partition, run_id, rows, fingerprint, manifest, loaded_at) "
            "VALUES (@t, @p, @run, @rows, @fp, @m, CURRENT_TIMESTAMP())",
            job_config=_params(
                t=("STRING", partition.table),
                p=("STRING", partition.name),
                run=("STRING", manifest.run_id),
                rows=("INT64", manifest.rows),
                fp=("STRING", manifest.fingerprint),
                m=("STRING", manifest.encode().decode()),
            ),
        ).result()

    def _error(self, exc: gexc.GoogleAPICallError) -> FatalError:
        where = f"dataset {self.client.project}.{self.dataset}"
        if isinstance(exc, gexc.NotFound):
            return FatalError(
                f"BigQuery {where} does not exist: create it (bq mk {self.dataset}) or fix the name."
            )
        if isinstance(exc, gexc.Unauthorized):
            return BadCredentialsError(
                f"BigQuery rejected the credentials for {where}: check the GcpCredentials block."
            )
        if isinstance(exc, gexc.Forbidden):
            return PermissionDeniedError(
                f"the service account lacks a right on {where} ({exc.message}): grant it roles/bigquery.dataEditor "
                "on the dataset and roles/bigquery.jobUser on the project."
            )
        return FatalError(f"BigQuery failed on {where}: {exc.message}.")


def _params(**values: tuple[str, Any]) -> bigquery.QueryJobConfig:
    return bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter(name, kind, value) for name, (kind, value) in values.items()
        ]
    )
