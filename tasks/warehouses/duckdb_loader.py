"""DuckDB, the embedded warehouse: one database file, each partition replaced in one transaction.

`properties` is DuckDB's JSON type, which keeps Mixpanel's text byte for byte (big integers, float
digits, key order) and answers `properties->>'$.key'`; `time` is TIMESTAMPTZ. A day is deleted by
its time range in the project's calendar (the manifest's timezone), then inserted from the day's
Parquet files; the whole tables are emptied and refilled; `_mp_manifests` records each load, all in
the same transaction. ``publish_status`` empties and refills `_mp_sync_status` in one transaction.

DuckDB lets one process write a database file at a time: a writer waits for another process's
transaction to end (up to ``lock_wait_seconds``), and loads from threads of one process are
serialised by a process-wide lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

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

TYPES = {"text": "VARCHAR", "json": "JSON", "timestamp": "TIMESTAMPTZ", "date": "DATE", "int64": "BIGINT"}
STATE_DDL = f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    table_name VARCHAR, partition VARCHAR, run_id VARCHAR, rows BIGINT, fingerprint VARCHAR,
    manifest JSON, loaded_at TIMESTAMPTZ, PRIMARY KEY (table_name, partition))"""
STATUS_DDL = [
    f"CREATE TABLE IF NOT EXISTS {SYNC_STATUS_TABLE} "
    f"({', '.join(f'{n} {t}' for n, t in status_columns(TYPES))})",
    f"CREATE VIEW IF NOT EXISTS {SYNC_STATUS_VIEW} AS {sync_status_query(SYNC_STATUS_TABLE)}",
]
VIEW_DDL = f"CREATE VIEW IF NOT EXISTS {RESOLVED_EVENTS_VIEW} AS {resolved_events_query(EVENTS_TABLE, MAPPINGS_TABLE)}"


def _ddl(table: str) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{n} {t}' for n, t in typed_columns(table, TYPES))})"


if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

_PROCESS_LOCK = threading.Lock()


class DuckDBLoader:
    def __init__(self, database: Path, lock_wait_seconds: float = 600.0, memory_limit_mb: int = 512) -> None:
        if not lock_wait_seconds >= 0:  # also refuses NaN
            raise FatalError(
                f"lock_wait_seconds must be 0 or more (got {lock_wait_seconds}): it is how long a load waits "
                "for another process writing the DuckDB database."
            )
        self.database = database
        self.lock_wait_seconds = lock_wait_seconds
        # DuckDB takes 80% of RAM by default; a worker runs beside other flows, so cap it (it spills)
        self.memory_limit_mb = int(memory_limit_mb)

    @contextmanager
    def connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        import duckdb  # ~25 MiB: imported by the runs that load DuckDB, not by every flow with its block

        deadline = time.monotonic() + self.lock_wait_seconds
        while True:
            try:
                conn = duckdb.connect(str(self.database), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise FatalError(
                        f"cannot open the DuckDB database {self.database} ({str(exc).splitlines()[0]}): "
                        "check the path, or stop the process that holds it."
                    ) from exc
                time.sleep(0.2)  # another process is writing: wait for its transaction to end
        try:
            conn.execute(f"SET memory_limit = '{self.memory_limit_mb}MB'")  # an int: nothing else reaches SQL
            # rows in a table have no order: without keeping the files' order, every thread inserts
            # (a 1M-event day loaded in 6.7 s instead of 11.8 s on two cores)
            conn.execute("SET preserve_insertion_order = false")
            yield conn
        finally:
            conn.close()

    def check(self) -> None:
        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalError(
                f"cannot create the folder of the DuckDB database {self.database}: {exc}."
            ) from exc
        with _PROCESS_LOCK, self.connection() as conn:
            for table in TABLE_COLUMNS:
                conn.execute(_ddl(table))
            for ddl in [STATE_DDL, VIEW_DDL, *STATUS_DDL]:
                conn.execute(ddl)

    def load(self, partition: Partition) -> None:
        if partition.table not in TABLE_COLUMNS:
            raise FatalError(f"DuckDB has no table {partition.table!r} to load.")
        columns = ", ".join(name for name, _ in TABLE_COLUMNS[partition.table])
        if partition.manifest.format != "parquet":
            raise FatalError(
                "the DuckDB warehouse loads Parquet files: run the flows with file_format=parquet."
            )
        with _PROCESS_LOCK, self.connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                self._replace(conn, partition, columns)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _replace(self, conn: duckdb.DuckDBPyConnection, partition: Partition, columns: str) -> None:
        table = partition.table  # one of TABLE_COLUMNS' keys, never user input
        if partition.is_day:
            start, end = partition.time_range()
            conn.execute(f"DELETE FROM {table} WHERE time >= ? AND time < ?", [start, end])
        else:
            conn.execute(f"DELETE FROM {table}")
        if partition.manifest.files:
            files = [str(f) for f in partition.local_paths()]
            conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM read_parquet(?)", [files])
        self._record(conn, partition)

    def _record(self, conn: duckdb.DuckDBPyConnection, partition: Partition) -> None:
        conn.execute(
            f"INSERT OR REPLACE INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)",
            list(manifest_record(partition)),
        )

    def publish_status(self, table: pa.Table) -> None:
        rows = status_rows(table)
        columns = ", ".join(SYNC_STATUS_SCHEMA.names)
        with _PROCESS_LOCK, self.connection() as conn:
            for ddl in STATUS_DDL:
                conn.execute(ddl)
            conn.register("mp_status_rows", rows)
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(f"DELETE FROM {SYNC_STATUS_TABLE}")
                conn.execute(
                    f"INSERT INTO {SYNC_STATUS_TABLE} ({columns}) SELECT {columns} FROM mp_status_rows"
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def loaded_run(self, table: str, partition: str) -> str | None:
        with _PROCESS_LOCK, self.connection() as conn:
            row = conn.execute(
                f"SELECT run_id FROM {STATE_TABLE} WHERE table_name = ? AND partition = ?", [table, partition]
            ).fetchone()
        return None if row is None else str(row[0])
