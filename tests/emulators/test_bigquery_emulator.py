"""What bqemulator 1.4.0 (tests/stores/bigquery.py) does for the operations a BigQuery destination needs.

Each test asserts real results against the emulator over its REST API (the v2 API google-cloud-bigquery
speaks; the SDK itself is not installed in this project). Names say ``supported`` or ``unsupported``;
an unsupported feature is pinned by asserting its failure, so a future emulator that fixes it shows up.

Supported:
* datasets.insert; tables.insert with a JSON column and DAY partitioning on ``time`` (kept in tables.get)
* load jobs by multipart upload: Parquet with ``properties`` as JSON *text* and NDJSON with ``properties``
  as an *object* both give a real JSON column (``JSON_TYPE = 'object'``, ``JSON_VALUE`` works)
* named query parameters in a single statement (jobs.query)
* ``BEGIN TRANSACTION; DELETE ...; INSERT ... SELECT ... FROM staging; COMMIT TRANSACTION;`` as one
  script, with the day bound by ``DECLARE`` (see below); a failing statement inside it (runtime ``ERROR()``
  or a bad column) rolls the whole transaction back, as does ``ROLLBACK TRANSACTION``
* ``CREATE OR REPLACE VIEW`` (tables.get reports ``type: VIEW``); ``INFORMATION_SCHEMA.PARTITIONS``

Unsupported / differs from BigQuery:
* query parameters inside a multi-statement script: the script fails with DuckDB's "Values were not
  provided for the following prepared statement parameters" (the emulator never binds them)
* NDJSON with ``properties`` as a JSON *string*: stays a string (``JSON_TYPE`` says DuckDB's ``varchar``)
* a load into a partition decorator ``table$YYYYMMDD``: 400 "Invalid table id for SQL"
* a failing query through jobs.query answers HTTP 200 with ``errors`` in the body (BigQuery: 4xx)
* tables.insert into a missing dataset: HTTP 500 ``internalError`` (BigQuery: 404 ``notFound``)
* a load into a missing dataset: job DONE with ``errorResult.reason == "invalid"`` (BigQuery: notFound)
* DDL ``CREATE TABLE ... (properties JSON) PARTITION BY DATE(time)``: tables.get reports ``properties``
  as STRING and no ``timePartitioning`` (the stored column still behaves as JSON)
* ``statistics.load.outputRows`` is the table's row count after the load, not the rows loaded
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.stores.bigquery import BigQueryEmulator, BigQueryError, BigQueryHTTP

pytestmark = pytest.mark.emulator  # what the stand-in does, not our code: `make test` runs it

TABLE = "mp_master_event"
SCHEMA = [
    {"name": "device_id", "type": "STRING"},
    {"name": "distinct_id", "type": "STRING"},
    {"name": "event_name", "type": "STRING"},
    {"name": "insert_id", "type": "STRING"},
    {"name": "properties", "type": "JSON"},
    {"name": "time", "type": "TIMESTAMP"},
    {"name": "user_id", "type": "STRING"},
]
COLUMNS = ", ".join(field["name"] for field in SCHEMA)


@pytest.fixture(scope="module")
def bq(bigquery_server: BigQueryEmulator) -> Iterator[BigQueryHTTP]:
    with bigquery_server.client() as client:
        yield client


def _dataset(bq: BigQueryHTTP, with_table: bool = True) -> str:
    """A fresh dataset (tests share one emulator), with the partitioned events table if asked."""
    name = f"mp_{uuid.uuid4().hex[:12]}"
    bq.create_dataset(name)
    if with_table:
        bq.create_table(name, TABLE, SCHEMA, partition_field="time")
    return name


def _event(insert_id: str, day: int, hour: int, x: str) -> dict[str, Any]:
    return {
        "device_id": f"dev-{insert_id}",
        "distinct_id": f"u-{insert_id}",
        "event_name": "Signed Up",
        "insert_id": insert_id,
        "properties": {"x": x, "n": 7, "nested": {"k": [1, 2]}},
        "time": datetime(2024, 1, day, hour, tzinfo=UTC),
        "user_id": None,
    }


def _parquet(path: Path, events: list[dict[str, Any]]) -> bytes:
    """A local Parquet file with ``properties`` as JSON text (a string column), read back as bytes."""
    columns: dict[str, Any] = {f["name"]: [e[f["name"]] for e in events] for f in SCHEMA}
    columns["properties"] = [json.dumps(e["properties"]) for e in events]
    columns["time"] = pa.array(columns["time"], pa.timestamp("us", tz="UTC"))
    columns["user_id"] = pa.array(columns["user_id"], pa.string())
    pq.write_table(pa.table(columns), path)
    return path.read_bytes()


def _ndjson(events: list[dict[str, Any]], properties_as_text: bool = False) -> bytes:
    lines = []
    for event in events:
        row = event | {"time": event["time"].isoformat()}
        if properties_as_text:
            row["properties"] = json.dumps(event["properties"])
        lines.append(json.dumps(row))
    return "\n".join(lines).encode()


def _micros(day: int, hour: int) -> str:
    """TIMESTAMP as the emulator puts it on the wire: epoch microseconds."""
    return str(int(datetime(2024, 1, day, hour, tzinfo=UTC).timestamp()) * 1_000_000)


def _json_checks(bq: BigQueryHTTP, dataset: str) -> list[dict[str, Any]]:
    return bq.query(
        f"SELECT insert_id, JSON_TYPE(properties) AS kind, JSON_VALUE(properties, '$.x') AS x,"
        f" JSON_VALUE(properties, '$.nested.k[1]') AS k1, time FROM {dataset}.{TABLE} ORDER BY insert_id"
    )


def _insert_ids(bq: BigQueryHTTP, dataset: str) -> list[str]:
    rows = bq.query(f"SELECT insert_id FROM {dataset}.{TABLE} ORDER BY insert_id")
    return [row["insert_id"] for row in rows]


def test_supported_create_dataset_and_day_partitioned_table_with_json(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq, with_table=False)
    created = bq.create_table(dataset, TABLE, SCHEMA, partition_field="time")
    table = bq.get_table(dataset, TABLE)
    assert created["tableReference"]["tableId"] == TABLE
    assert table["timePartitioning"] == {"type": "DAY", "field": "time"}
    assert [(f["name"], f["type"]) for f in table["schema"]["fields"]] == [
        (f["name"], f["type"]) for f in SCHEMA
    ]
    assert table["numRows"] == "0"


def test_supported_load_parquet_with_properties_as_json_text_gives_real_json(
    bq: BigQueryHTTP, tmp_path: Path
) -> None:
    dataset = _dataset(bq)
    data = _parquet(tmp_path / "events.parquet", [_event("a", 2, 3, "1"), _event("b", 3, 4, "2")])
    job = bq.load(dataset, TABLE, data, "PARQUET")
    assert job["status"] == {"state": "DONE"}
    assert _json_checks(bq, dataset) == [
        {"insert_id": "a", "kind": "object", "x": "1", "k1": "2", "time": _micros(2, 3)},
        {"insert_id": "b", "kind": "object", "x": "2", "k1": "2", "time": _micros(3, 4)},
    ]


def test_supported_load_ndjson_with_properties_as_object_gives_real_json(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    job = bq.load(dataset, TABLE, _ndjson([_event("a", 2, 3, "1")]), "NEWLINE_DELIMITED_JSON")
    assert job["status"] == {"state": "DONE"}
    assert _json_checks(bq, dataset) == [
        {"insert_id": "a", "kind": "object", "x": "1", "k1": "2", "time": _micros(2, 3)}
    ]


def test_unsupported_load_ndjson_with_properties_as_json_string_stays_a_string(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    data = _ndjson([_event("a", 2, 3, "1")], properties_as_text=True)
    bq.load(dataset, TABLE, data, "NEWLINE_DELIMITED_JSON")
    assert _json_checks(bq, dataset) == [
        {"insert_id": "a", "kind": "varchar", "x": None, "k1": None, "time": _micros(2, 3)}
    ]


def test_unsupported_load_output_rows_counts_the_whole_table(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    first = bq.load(dataset, TABLE, _ndjson([_event("a", 2, 3, "1")]), "NEWLINE_DELIMITED_JSON")
    second = bq.load(dataset, TABLE, _ndjson([_event("b", 2, 4, "2")]), "NEWLINE_DELIMITED_JSON")
    assert first["statistics"]["load"]["outputRows"] == "1"
    assert second["statistics"]["load"]["outputRows"] == "2"  # BigQuery: "1", the rows of this load


def test_unsupported_load_into_partition_decorator(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    with pytest.raises(BigQueryError) as failed:
        bq.load(dataset, f"{TABLE}$20240102", _ndjson([_event("a", 2, 3, "1")]), "NEWLINE_DELIMITED_JSON")
    assert (failed.value.http_status, failed.value.reason) == (400, "invalid")
    assert failed.value.message == f"Invalid table id for SQL: '{TABLE}$20240102'"
    assert _insert_ids(bq, dataset) == []


def test_supported_query_parameters_in_a_single_statement(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    events = [_event("a", 2, 3, "1"), _event("b", 2, 9, "2"), _event("c", 3, 1, "3")]
    bq.load(dataset, TABLE, _ndjson(events), "NEWLINE_DELIMITED_JSON")
    answer = bq.query_response(
        f"DELETE FROM {dataset}.{TABLE} WHERE DATE(time) = @day", {"day": ("DATE", "2024-01-02")}
    )
    assert answer["numDmlAffectedRows"] == "2"
    assert _insert_ids(bq, dataset) == ["c"]


def _load_day_and_staging(bq: BigQueryHTTP, dataset: str) -> None:
    """Target: a, b on 2024-01-02 and c on 2024-01-03; staging (a load job): a2, d for 2024-01-02."""
    old = [_event("a", 2, 3, "1"), _event("b", 2, 9, "2"), _event("c", 3, 1, "3")]
    bq.load(dataset, TABLE, _ndjson(old), "NEWLINE_DELIMITED_JSON")
    bq.create_table(dataset, "staging", SCHEMA)
    staged = [_event("a2", 2, 3, "10"), _event("d", 2, 22, "11")]
    bq.load(dataset, "staging", _ndjson(staged), "NEWLINE_DELIMITED_JSON")


def _replace_day(dataset: str, day: str, bind_day: str) -> str:
    return f"""
        {bind_day}
        BEGIN TRANSACTION;
        DELETE FROM {dataset}.{TABLE} WHERE DATE(time) = {day};
        INSERT INTO {dataset}.{TABLE} ({COLUMNS})
        SELECT {COLUMNS} FROM {dataset}.staging;
        COMMIT TRANSACTION;
    """


def test_supported_transaction_delete_day_then_insert_from_staging_with_declare(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    _load_day_and_staging(bq, dataset)
    answer = bq.query_response(_replace_day(dataset, "day", "DECLARE day DATE DEFAULT DATE '2024-01-02';"))
    assert answer["statementType"] == "SCRIPT"
    assert _json_checks(bq, dataset) == [
        {"insert_id": "a2", "kind": "object", "x": "10", "k1": "2", "time": _micros(2, 3)},
        {"insert_id": "c", "kind": "object", "x": "3", "k1": "2", "time": _micros(3, 1)},
        {"insert_id": "d", "kind": "object", "x": "11", "k1": "2", "time": _micros(2, 22)},
    ]
    partitions = bq.query(
        f"SELECT partition_id, total_rows FROM {dataset}.INFORMATION_SCHEMA.PARTITIONS"
        f" WHERE table_name = '{TABLE}' ORDER BY partition_id"
    )
    assert partitions == [
        {"partition_id": "20240102", "total_rows": "2"},
        {"partition_id": "20240103", "total_rows": "1"},
    ]


def test_unsupported_query_parameters_in_a_multi_statement_transaction(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    _load_day_and_staging(bq, dataset)
    with pytest.raises(BigQueryError) as failed:
        bq.query_response(_replace_day(dataset, "@day", ""), {"day": ("DATE", "2024-01-02")})
    assert (failed.value.http_status, failed.value.reason) == (200, "invalidQuery")
    assert "Values were not provided for the following prepared statement parameters: day" in str(
        failed.value
    )
    assert _insert_ids(bq, dataset) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "failing_statement",
    [
        "SELECT ERROR('boom');",  # fails at run time, after the DELETE ran
        "INSERT INTO {dataset}.{table} (insert_id) SELECT no_such_column FROM {dataset}.staging;",
        "ROLLBACK TRANSACTION;",  # not a failure: an explicit rollback
    ],
    ids=["runtime-error", "bad-column", "explicit-rollback"],
)
def test_supported_failing_statement_in_transaction_rolls_back(
    bq: BigQueryHTTP, failing_statement: str
) -> None:
    dataset = _dataset(bq)
    _load_day_and_staging(bq, dataset)
    statement = failing_statement.format(dataset=dataset, table=TABLE)
    script = f"""
        BEGIN TRANSACTION;
        DELETE FROM {dataset}.{TABLE} WHERE TRUE;
        {statement}
        {"" if statement.startswith("ROLLBACK") else "COMMIT TRANSACTION;"}
    """
    if statement.startswith("ROLLBACK"):
        bq.query_response(script)
    else:
        with pytest.raises(BigQueryError) as failed:
            bq.query_response(script)
        assert failed.value.reason == "invalidQuery"
    assert _insert_ids(bq, dataset) == ["a", "b", "c"]


def test_supported_create_or_replace_view(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq)
    bq.load(dataset, TABLE, _ndjson([_event("a", 2, 3, "1")]), "NEWLINE_DELIMITED_JSON")
    view = f"{dataset}.events_view"
    first = bq.query_response(f"CREATE OR REPLACE VIEW {view} AS SELECT insert_id FROM {dataset}.{TABLE}")
    second = bq.query_response(
        f"CREATE OR REPLACE VIEW {view} AS"
        f" SELECT insert_id, JSON_VALUE(properties, '$.x') AS x FROM {dataset}.{TABLE}"
    )
    assert (first["ddlOperationPerformed"], second["ddlOperationPerformed"]) == ("CREATE", "REPLACE")
    assert bq.query(f"SELECT * FROM {view}") == [{"insert_id": "a", "x": "1"}]
    table = bq.get_table(dataset, "events_view")
    assert table["type"] == "VIEW"
    assert [f["name"] for f in table["schema"]["fields"]] == ["insert_id", "x"]


def test_missing_dataset_errors(bq: BigQueryHTTP) -> None:
    """BigQuery answers 404 notFound; the emulator's answers, pinned (partly unsupported)."""
    with pytest.raises(BigQueryError) as query:
        bq.query("SELECT * FROM no_such_dataset.t")
    # jobs.query: HTTP 200 with ``errors`` in the body (BigQuery: HTTP 404)
    assert (query.value.http_status, query.value.reason) == (200, "notFound")
    assert (
        query.value.message == "Not found: Dataset test-project:no_such_dataset was not found in location US"
    )

    with pytest.raises(BigQueryError) as get:
        bq.get_table("no_such_dataset", "t")
    assert (get.value.http_status, get.value.reason) == (404, "notFound")
    assert get.value.message == "Not found: table:test-project.no_such_dataset.t"

    with pytest.raises(BigQueryError) as load:
        bq.load(
            "no_such_dataset", "t", b'{"a": 1}', "NEWLINE_DELIMITED_JSON", [{"name": "a", "type": "INT64"}]
        )
    assert (load.value.http_status, load.value.reason) == (200, "invalid")  # BigQuery: notFound
    assert load.value.message.endswith("Not found: dataset:test-project.no_such_dataset")


def test_unsupported_create_table_in_missing_dataset_is_an_internal_error(
    bigquery_server: BigQueryEmulator,
) -> None:
    # its own client: the emulator then resets this kept-alive connection
    with bigquery_server.client() as own, pytest.raises(BigQueryError) as failed:
        own.create_table("no_such_dataset", TABLE, SCHEMA)
    assert (failed.value.http_status, failed.value.reason) == (500, "internalError")  # BigQuery: 404
    assert failed.value.message == "An internal error occurred"
    with bigquery_server.client() as fresh:
        assert fresh.query("SELECT 1 AS one") == [{"one": "1"}]


def test_unsupported_ddl_create_table_metadata_loses_json_and_partitioning(bq: BigQueryHTTP) -> None:
    dataset = _dataset(bq, with_table=False)
    bq.query_response(
        f"CREATE TABLE {dataset}.ddl_events (insert_id STRING, properties JSON, time TIMESTAMP)"
        " PARTITION BY DATE(time)"
    )
    table = bq.get_table(dataset, "ddl_events")
    assert [f["type"] for f in table["schema"]["fields"]] == ["STRING", "STRING", "TIMESTAMP"]
    assert "timePartitioning" not in table
    row = json.dumps({"insert_id": "a", "properties": {"x": "1"}, "time": "2024-01-02T00:00:00Z"})
    bq.load(dataset, "ddl_events", row.encode(), "NEWLINE_DELIMITED_JSON")
    rows = bq.query(
        f"SELECT JSON_TYPE(properties) AS kind, JSON_VALUE(properties, '$.x') AS x FROM {dataset}.ddl_events"
    )
    assert rows == [{"kind": "object", "x": "1"}]  # the stored column is still JSON
