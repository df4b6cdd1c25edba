"""Snowflake: committed Parquet files PUT to a stage, COPY'd into a staging table, swapped in by a transaction.

A day: ``DELETE`` its time range (the project's calendar) and ``INSERT … SELECT`` from the staging
table with ``PARSE_JSON(properties)`` into the VARIANT column, plus the ``_MP_MANIFESTS`` record, in
one transaction; the whole tables are emptied and refilled the same way. ``publish_status`` empties
and refills ``_MP_SYNC_STATUS`` in one transaction, from one bound JSON text cast column by column. The views
name their tables unqualified: Snowflake resolves names in a view's query in the view's own schema.
Names in SQL text are fixed or generated here; the database and schema come from the connection,
values are bound.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import pyarrow as pa

from tasks.errors import FatalError
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
    manifest_record,
    resolved_events_query,
    status_columns,
    status_rows,
    sync_status_query,
)

TYPES = {"text": "STRING", "json": "VARIANT", "timestamp": "TIMESTAMP_TZ", "date": "DATE", "int64": "NUMBER"}
STATE_DDL = f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (table_name STRING, partition STRING, run_id STRING,
    rows NUMBER, fingerprint STRING, manifest STRING, loaded_at TIMESTAMP_TZ)"""
STATUS_DDL = [
    f"CREATE TABLE IF NOT EXISTS {SYNC_STATUS_TABLE} "
    f"({', '.join(f'{n} {t}' for n, t in status_columns(TYPES))})",
    f"CREATE VIEW IF NOT EXISTS {SYNC_STATUS_VIEW} AS {sync_status_query(SYNC_STATUS_TABLE)}",
]
STATUS_INSERT = (
    f"INSERT INTO {SYNC_STATUS_TABLE} ({', '.join(SYNC_STATUS_SCHEMA.names)}) "
    f"SELECT {', '.join(f'value:{n}::{t}' for n, t in status_columns(TYPES))} "
    "FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))"
)
VIEW_DDL = f"CREATE VIEW IF NOT EXISTS {RESOLVED_EVENTS_VIEW} AS {resolved_events_query(EVENTS_TABLE, MAPPINGS_TABLE)}"
STAGE = "mp_pipelines_load"


def put_source(path: object) -> str:
    """``'file://<path>'`` as a Snowflake string literal: PUT takes no bind parameters, so the path is
    quoted with its backslashes and single quotes escaped (a path cannot end the literal)."""
    text = str(path)
    if any(ord(c) < 32 for c in text):
        raise FatalError(f"cannot PUT {text!r} to Snowflake: the path holds a control character.")
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'file://{escaped}'"


def _ddl(table: str) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{n} {t}' for n, t in typed_columns(table, TYPES))})"


class SnowflakeLoader:
    """``connect`` opens a DB-API connection in the target database and schema (the block's)."""

    def __init__(self, connect: Callable[[], Any], where: str) -> None:
        self.connect = connect
        self.where = where  # "database.schema", for messages

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        with closing(self.connect()) as conn, closing(conn.cursor()) as cur:
            yield cur

    def check(self) -> None:
        with self.cursor() as cur:
            cur.execute("SELECT CURRENT_DATABASE(), CURRENT_SCHEMA()")
            database, schema = cur.fetchone()
            if not database or not schema:
                raise FatalError(
                    f"Snowflake has no schema {self.where} for these credentials: create it or fix the "
                    "database and schema of the SnowflakeConnector block."
                )
            for table in TABLE_COLUMNS:
                cur.execute(_ddl(table))
            for ddl in [STATE_DDL, VIEW_DDL, *STATUS_DDL]:
                cur.execute(ddl)

    def load(self, partition: Partition) -> None:
        if partition.table not in TABLE_COLUMNS:
            raise FatalError(f"Snowflake has no table {partition.table!r} to load.")
        staging = f"mp_load_{uuid.uuid4().hex[:16]}"  # unique per load: loads of other days run beside it
        columns = [name for name, _ in TABLE_COLUMNS[partition.table]]
        select = ", ".join(f"PARSE_JSON({c})" if c == "properties" else c for c in columns)
        with self.cursor() as cur:
            self._stage(cur, partition, staging)
            try:
                cur.execute("BEGIN")
                if partition.is_day:
                    start, end = partition.time_range()
                    cur.execute(f"DELETE FROM {partition.table} WHERE time >= ? AND time < ?", (start, end))
                else:
                    cur.execute(f"DELETE FROM {partition.table}")
                if partition.manifest.files:
                    cur.execute(
                        f"INSERT INTO {partition.table} ({', '.join(columns)}) SELECT {select} FROM {staging}"
                    )
                self._record(cur, partition)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.execute(f"DROP TABLE IF EXISTS {staging}")

    def _stage(self, cur: Any, partition: Partition, staging: str) -> None:
        """PUT the files into a temporary stage and COPY them into a transient table of text columns."""
        text = typed_columns(partition.table, TYPES | {"json": "STRING"})
        cur.execute(f"CREATE TRANSIENT TABLE {staging} ({', '.join(f'{n} {t}' for n, t in text)})")
        if not partition.manifest.files:
            return
        folder = f"@{STAGE}/{staging}/"
        cur.execute(f"CREATE TEMPORARY STAGE IF NOT EXISTS {STAGE}")
        for path in partition.local_paths():
            cur.execute(f"PUT {put_source(path)} {folder} AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
        cur.execute(
            f"COPY INTO {staging} FROM {folder} FILE_FORMAT = (TYPE = PARQUET) "
            "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE"
        )

    def _record(self, cur: Any, partition: Partition) -> None:
        cur.execute(
            f"DELETE FROM {STATE_TABLE} WHERE table_name = ? AND partition = ?",
            (partition.table, partition.name),
        )
        cur.execute(f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)", manifest_record(partition))

    def publish_status(self, table: pa.Table) -> None:
        rows = status_rows(table)
        # all rows as one bound JSON text, typed by the casts: one statement whatever the row count, and
        # timestamps keep their instant (a bound datetime would be read in the session's time zone); a
        # null is left out: a missing key is SQL NULL, where a JSON null is a VARIANT value
        present = [{k: v for k, v in row.items() if v is not None} for row in rows.to_pylist()]
        text = json.dumps(present, default=lambda value: value.isoformat())
        with self.cursor() as cur:
            for ddl in STATUS_DDL:
                cur.execute(ddl)
            cur.execute("BEGIN")
            try:
                cur.execute(f"DELETE FROM {SYNC_STATUS_TABLE}")
                cur.execute(STATUS_INSERT, (text,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def loaded_run(self, table: str, partition: str) -> str | None:
        with self.cursor() as cur:
            cur.execute(
                f"SELECT run_id FROM {STATE_TABLE} WHERE table_name = ? AND partition = ?",
                (table, partition),
            )
            row = cur.fetchone()
        return None if row is None else str(row[0])
