"""Each warehouse on its local stand-in (DuckDB itself, fakesnow, the BigQuery emulator) with how to
query what it holds, and a fresh Glue database on moto for Redshift Spectrum."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery
from prefect_gcp import GcpCredentials

from blocks.destinations.bigquery import BigQueryWarehouse
from blocks.destinations.catalog import AnyDestination
from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.local import LocalDestination
from blocks.destinations.snowflake import SnowflakeWarehouse
from tasks.warehouses.duckdb_loader import DuckDBLoader
from tests.stores.s3 import S3Server
from tests.stores.snowflake import unique_name


@dataclass
class Warehouse:
    """A block, and how to run a query on what it holds (rows as tuples)."""

    block: AnyDestination
    query: Callable[[str, list[Any]], list[tuple[Any, ...]]]
    json_text: str  # SQL of properties.distinct_id as text, in the warehouse's JSON syntax
    mark: str  # the driver's placeholder for a bound value
    exact_json: bool  # False where the JSON type re-serialises (Snowflake's VARIANT): compare parsed values
    as_text: str  # SQL of the properties column as JSON text


def duckdb_warehouse(tmp_path: Path, request: pytest.FixtureRequest) -> Warehouse:
    block = DuckDBWarehouse(
        database=str(tmp_path / "wh.duckdb"),
        files=LocalDestination(path=str(tmp_path / "files"), create_missing=True),
    )

    def query(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with DuckDBLoader(Path(block.database)).connection(read_only=True) as conn:
            return conn.execute(sql, params).fetchall()

    return Warehouse(
        block,
        query,
        "properties->>'$.distinct_id'",
        "?",
        exact_json=True,
        as_text="CAST(properties AS VARCHAR)",
    )


def snowflake_warehouse(tmp_path: Path, request: pytest.FixtureRequest) -> Warehouse:
    server = request.getfixturevalue("snowflake_server")
    # unsaved: a saved SnowflakeCredentials block loses the extra host/port/protocol fields on load
    connector = server.connector(unique_name(), "MIXPANEL")
    block = SnowflakeWarehouse(
        connector=connector, files=LocalDestination(path=str(tmp_path / "files"), create_missing=True)
    )

    def query(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with closing(block._connection()) as conn, closing(conn.cursor()) as cur:
            cur.execute(sql, params)
            return [tuple(row) for row in cur.fetchall()]

    return Warehouse(
        block, query, "properties:distinct_id::string", "?", exact_json=False, as_text="TO_JSON(properties)"
    )


def bigquery_warehouse(tmp_path: Path, request: pytest.FixtureRequest) -> Warehouse:
    server = request.getfixturevalue("bigquery_server")
    dataset = f"mp_{uuid.uuid4().hex[:10]}"
    # a generated service-account key whose token_uri is the GCS tests' loopback token endpoint: the
    # client runs Google's real auth path, and the emulator ignores the token it sends
    keys = request.getfixturevalue("gcs_server")
    credentials = GcpCredentials(service_account_info=keys.service_account, project=server.project)
    block = BigQueryWarehouse(
        credentials=credentials,
        dataset=dataset,
        files=LocalDestination(path=str(tmp_path / "files"), create_missing=True),
        api_endpoint=server.url,
    )
    client = block._client()
    client.create_dataset(dataset)
    kinds = {datetime: "TIMESTAMP", str: "STRING", int: "INT64"}

    def query(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        config = bigquery.QueryJobConfig(
            default_dataset=f"{server.project}.{dataset}",
            query_parameters=[bigquery.ScalarQueryParameter(None, kinds[type(v)], v) for v in params],
        )
        return [tuple(row.values()) for row in client.query(sql, job_config=config).result()]

    return Warehouse(
        block,
        query,
        "JSON_VALUE(properties, '$.distinct_id')",
        "?",
        exact_json=False,
        as_text="TO_JSON_STRING(properties)",
    )


WAREHOUSES = {"duckdb": duckdb_warehouse, "snowflake": snowflake_warehouse, "bigquery": bigquery_warehouse}


def glue_database(server: S3Server) -> str:
    name = f"mixpanel_{uuid.uuid4().hex[:8]}"
    server.client("glue").create_database(DatabaseInput={"Name": name})
    return name
