"""The warehouses' views in DuckDB, Snowflake (fakesnow) and BigQuery (emulator), one scenario each:
``mp_master_event_resolved`` over events and mappings committed here (loaded by the commit's hook, as a
run loads them), and ``mp_sync_status`` after ``publish_status``. The rows are constructed, so the
expected answers are known without asking Mixpanel or the calendar.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from blocks.destinations.spectrum import RedshiftSpectrumDestination
from tasks.errors import FatalError
from tasks.lake.commit import Lake
from tasks.lake.files import RollingFiles
from tasks.lake.manifest import Manifest
from tasks.lake.tables import replace_table
from tasks.schema import (
    EVENTS_TABLE,
    MAPPINGS_SCHEMA,
    MAPPINGS_TABLE,
    RESOLVED_EVENTS_VIEW,
    SYNC_STATUS_SCHEMA,
    SYNC_STATUS_VIEW,
)
from tasks.warehouses.bigquery_loader import BigQueryLoader
from tasks.warehouses.duckdb_loader import DuckDBLoader
from tasks.warehouses.warehouse import Loader, WarehouseHook, status_rows
from tests.kit.docs_text import fenced_blocks, page_text
from tests.kit.warehouses import WAREHOUSES, Warehouse, glue_database
from tests.stores.s3 import S3Server, make_s3_destination

WAREHOUSES_PAGE = "docs/destinations/warehouses.md"  # the queries a user reads are the ones run here
SPECTRUM_PAGE = "docs/destinations/spectrum.md"
DAY = "2024-03-05"  # any day: nothing here depends on what the calendar brings
# insert_id, distinct_id, and the resolved id the view must give
EVENTS = [
    ("e1", "$device:d1", "u1"),  # a device id merged into the user u1
    ("e2", "u1", "u1"),
    ("e3", "u2", "u2"),  # a user with no mapping keeps its own id
    ("e4", "$device:d2", "$device:d2"),  # an anonymous device, never merged
    ("e5", "", ""),  # no distinct_id: no user
]
MAPPINGS = {"$device:d1": "u1", "u1": "u1"}
USERS = 3  # u1 (with its device), u2, $device:d2; the empty id is no user


@pytest.fixture(params=list(WAREHOUSES))
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    return WAREHOUSES[request.param](tmp_path, request)


def connected(warehouse: Warehouse) -> tuple[Lake, Loader]:
    lake = warehouse.block.connect(1)
    (hook,) = lake.hooks
    assert isinstance(hook, WarehouseHook)
    return lake, hook.loader


def commit_events(lake: Lake, scratch: Path) -> None:
    """The day's events committed to the lake; the commit's hook loads them into the warehouse."""
    at = datetime(2024, 3, 5, 12, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "device_id": [None] * len(EVENTS),
            "distinct_id": [d for _, d, _ in EVENTS],
            "event_name": ["Viewed"] * len(EVENTS),
            "insert_id": [i for i, _, _ in EVENTS],
            "properties": ['{"n":1}'] * len(EVENTS),
            "time": pl.Series([at] * len(EVENTS)).cast(pl.Datetime("us", "UTC")),
            "user_id": [None] * len(EVENTS),
        }
    )
    stage = lake.open_stage(EVENTS_TABLE, "views")
    files = RollingFiles(stage.directory(DAY, scratch))
    files.write(frame)
    stage.add(DAY, files.close())
    draft = Manifest(
        table=EVENTS_TABLE,
        partition=DAY,
        files=(),
        rows=len(EVENTS),
        fingerprint="0",
        format="parquet",
        run_id="views",
        exported_at=at.isoformat(),
    )
    lake.commit(stage, DAY, draft)


def commit_mappings(lake: Lake) -> None:
    frame = pl.DataFrame({"distinct_id": list(MAPPINGS), "resolved_distinct_id": list(MAPPINGS.values())})
    replace_table(lake, MAPPINGS_TABLE, MAPPINGS_SCHEMA, [frame], "views", "resolved_distinct_id")


def resolved(warehouse: Warehouse) -> list[tuple[Any, ...]]:
    return sorted(
        warehouse.query(
            f"SELECT insert_id, distinct_id, resolved_distinct_id FROM {RESOLVED_EVENTS_VIEW}", []
        )
    )


def documented_users_query() -> str:
    """The warehouses page's unique-users query, verbatim (its line after ``-- unique users``)."""
    found = re.search(r"^-- unique users[^\n]*\n(SELECT [^;]*);", page_text(WAREHOUSES_PAGE), re.MULTILINE)
    assert found, f"{WAREHOUSES_PAGE} has no unique-users query after a `-- unique users` comment"
    assert RESOLVED_EVENTS_VIEW in found.group(1), "the documented unique-users query must use the view"
    return found.group(1)


def test_the_resolved_view_gives_each_event_its_user(warehouse: Warehouse, tmp_path: Path) -> None:
    destination, _ = connected(warehouse)
    commit_events(destination, tmp_path / "scratch")
    commit_mappings(destination)
    assert resolved(warehouse) == [(i, d, r) for i, d, r in EVENTS]
    assert warehouse.query(documented_users_query(), []) == [(USERS,)]
    columns = warehouse.query(f"SELECT * FROM {RESOLVED_EVENTS_VIEW} WHERE insert_id = 'e1'", [])
    assert len(columns[0]) == 8, "the events table's seven columns plus resolved_distinct_id"


def test_the_resolved_view_works_before_any_mappings_were_loaded(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    destination, _ = connected(warehouse)
    commit_events(destination, tmp_path / "scratch")
    assert resolved(warehouse) == [(i, d, d) for i, d, _ in EVENTS], "each event is its own user"
    connected(warehouse)  # a second run's check leaves the views as they are
    commit_mappings(destination)
    assert resolved(warehouse) == [(i, d, r) for i, d, r in EVENTS]


def status(*days: tuple[str, str, int | None, int | None]) -> pa.Table:
    """Status rows of ``days`` (day, state, rows held, Mixpanel's rows), the rest derived or fixed."""
    computed = datetime(2024, 3, 7, 6, 30, tzinfo=UTC)
    return pa.Table.from_pylist(
        [
            {
                "day": date.fromisoformat(day),
                "state": state,
                "rows_held": held,
                "mixpanel_rows": counted,
                "difference": None if held is None or counted is None else held - counted,
                "exported_at": None if held is None else datetime(2024, 3, 6, 1, tzinfo=UTC),
                "checked_at": None if counted is None else computed,
                "filter": None,
                "reason": None if state == "in_sync" else f"the day is {state}.",
                "computed_at": computed,
            }
            for day, state, held, counted in days
        ],
        schema=SYNC_STATUS_SCHEMA,
    )


def status_view(warehouse: Warehouse) -> list[dict[str, Any]]:
    """The view's rows as the status flow wrote them (timestamps compared as instants). Nulls are read
    with ``IS NULL``: fakesnow's HTTP results render a null TIMESTAMP_TZ as the epoch (stored null)."""
    names = SYNC_STATUS_SCHEMA.names
    nulls = ", ".join(f"{name} IS NULL" for name in names)
    rows = warehouse.query(f"SELECT {', '.join(names)}, {nulls} FROM {SYNC_STATUS_VIEW} ORDER BY day", [])
    return [
        {
            name: None if null else value.astimezone(UTC) if isinstance(value, datetime) else value
            for name, value, null in zip(names, row[: len(names)], row[len(names) :], strict=True)
        }
        for row in rows
    ]


def test_publish_status_replaces_the_rows_whole(warehouse: Warehouse) -> None:
    _, loader = connected(warehouse)
    assert status_view(warehouse) == [], "the view exists, empty, from the first check"
    loader.publish_status(status(("2024-03-04", "in_sync", 5, 5), ("2024-03-05", "differs", 5, 6)))
    second = status(("2024-03-05", "in_sync", 6, 6), ("2024-03-06", "missing", None, 4))
    loader.publish_status(second)
    assert status_view(warehouse) == second.to_pylist()
    loader.publish_status(status())
    assert status_view(warehouse) == [], "an empty status empties the table"


def test_bad_status_rows_are_refused_in_one_sentence() -> None:
    with pytest.raises(FatalError, match=r"^the sync status lacks the column\(s\) reason, computed_at: "):
        status_rows(status(("2024-03-05", "in_sync", 1, 1)).drop_columns(["reason", "computed_at"]))
    wrong = status(("2024-03-05", "in_sync", 1, 1)).set_column(2, "rows_held", pa.array(["many"]))
    with pytest.raises(FatalError, match=r"^the sync status does not fit its schema \("):
        status_rows(wrong)


def test_publish_status_creates_its_table_and_view_when_absent(tmp_path: Path) -> None:
    loader = DuckDBLoader(tmp_path / "fresh.duckdb")  # never checked: no table yet
    rows = status(("2024-03-05", "behind", None, None))
    loader.publish_status(rows)
    with loader.connection(read_only=True) as conn:
        assert conn.execute(f"SELECT day, state FROM {SYNC_STATUS_VIEW}").fetchall() == [
            (date(2024, 3, 5), "behind")
        ]


def test_a_hostile_bigquery_project_is_refused() -> None:
    client = bigquery.Client(project="evil`.x; DROP TABLE y; --", credentials=AnonymousCredentials())
    with pytest.raises(FatalError, match=r"^BigQuery project .* is not a project id"):
        BigQueryLoader(client, "mixpanel")


@pytest.mark.parametrize("dataset", ["mixpanel`; DROP TABLE x; --", "a.b", "mp master", ""])
def test_a_hostile_dataset_name_is_refused(dataset: str) -> None:
    with pytest.raises(FatalError, match="is not a plain identifier"):
        BigQueryLoader(client=None, dataset=dataset)  # type: ignore[arg-type]


def test_spectrum_publishes_the_status_as_a_parquet_table_switched_whole(s3_server: S3Server) -> None:
    """Glue has no view Spectrum reads: ``_mp_sync_status`` is a Parquet table whose location moves to a
    new folder per publication, in one Glue call; the previous folder is removed."""
    block = RedshiftSpectrumDestination(
        s3=make_s3_destination(s3_server), glue_database=glue_database(s3_server)
    )
    lake = block.connect(1)
    (hook,) = lake.hooks
    assert isinstance(hook, WarehouseHook)
    first, second = status(("2024-03-05", "differs", 5, 6)), status(("2024-03-05", "in_sync", 6, 6))
    locations = []
    for rows in (first, second):
        hook.loader.publish_status(rows)
        table = s3_server.client("glue").get_table(DatabaseName=block.glue_database, Name="_mp_sync_status")
        locations.append(table["Table"]["StorageDescriptor"]["Location"])
    root = lake.describe("")
    keys = [i.key for i in lake.storage.list("1/_state/spectrum/_mp_sync_status/")]
    assert [lake.describe(k).rsplit("/", 1)[0] + "/" for k in keys] == [locations[1]], "one folder"
    body = lake.storage.get_bytes(keys[0])
    assert body is not None and locations[0] != locations[1] and locations[1].startswith(root)
    assert pq.read_table(io.BytesIO(body)).to_pylist() == second.to_pylist()


def spectrum_queries() -> list[str]:
    """The Spectrum page's queries, verbatim: the SQL block that reads ``_mp_sync_status``."""
    (block,) = [b for b in fenced_blocks(SPECTRUM_PAGE, "sql") if '"_mp_sync_status"' in b]
    return [statement.strip() for statement in block.split(";") if statement.strip()]


def glue_rows(lake: Lake, location: str, symlinks: bool) -> pa.Table:
    """What Spectrum reads at a Glue location: the files its symlink manifest lists, or its Parquet files."""
    root = lake.describe("")
    key = location[len(root) :]
    if symlinks:
        body = lake.storage.get_bytes(key + "symlink.txt")
        assert body is not None
        keys = [uri[len(root) :] for uri in body.decode().splitlines()]
    else:
        keys = [i.key for i in lake.storage.list(key)]
    tables = [pq.read_table(io.BytesIO(lake.storage.get_bytes(k) or b"")) for k in keys]
    return pa.concat_tables(tables)


def test_the_documented_spectrum_queries_answer_as_the_views_do(s3_server: S3Server, tmp_path: Path) -> None:
    """Spectrum's SQL semantics checked with DuckDB (moto's Redshift answers canned rows) over exactly
    what the Glue locations name, in a schema ``mixpanel`` as in the page's external schema."""
    block = RedshiftSpectrumDestination(
        s3=make_s3_destination(s3_server), glue_database=glue_database(s3_server)
    )
    lake = block.connect(1)
    commit_events(lake, tmp_path / "scratch")
    commit_mappings(lake)
    (hook,) = lake.hooks
    assert isinstance(hook, WarehouseHook)
    rows = status(("2024-03-05", "in_sync", 5, 5))
    hook.loader.publish_status(rows)
    glue = s3_server.client("glue")
    (day,) = glue.get_partitions(DatabaseName=block.glue_database, TableName=EVENTS_TABLE)["Partitions"]

    def location(table: str) -> str:
        found = glue.get_table(DatabaseName=block.glue_database, Name=table)["Table"]
        return str(found["StorageDescriptor"]["Location"])

    con = duckdb.connect()
    con.execute("CREATE SCHEMA mixpanel")
    for name, data in {
        EVENTS_TABLE: glue_rows(lake, day["StorageDescriptor"]["Location"], symlinks=True),
        MAPPINGS_TABLE: glue_rows(lake, location(MAPPINGS_TABLE), symlinks=True),
        "_mp_sync_status": glue_rows(lake, location("_mp_sync_status"), symlinks=False),
    }.items():
        con.register("rows", data)
        con.execute(f'CREATE TABLE mixpanel."{name}" AS SELECT * FROM rows')
        con.unregister("rows")
    users, synced = spectrum_queries()
    assert con.execute(users).fetchall() == [(USERS,)]
    assert con.sql(synced).to_arrow_table().to_pylist() == rows.to_pylist()
