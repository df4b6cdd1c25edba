"""What a Snowflake destination can rely on in fakesnow's server, through the real connector over HTTP.

Each test pins down a behaviour, including where the emulator differs from Snowflake, so that a
destination written against it knows which paths are covered and which are not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect_snowflake import SnowflakeConnector
from pydantic import ValidationError
from snowflake.connector import SnowflakeConnection
from snowflake.connector.errors import InternalServerError, OperationalError, ProgrammingError

from tests.stores.process import free_port
from tests.stores.snowflake import SnowflakeServer, unique_name

pytestmark = pytest.mark.emulator  # what the stand-in does, not our code: `make test` runs it

SCHEMA = "RAW"
DAY = date(2024, 1, 1)

CREATE_EVENTS = """
CREATE TABLE IF NOT EXISTS mp_master_event (
    device_id STRING, distinct_id STRING, event_name STRING, insert_id STRING,
    properties VARIANT, time TIMESTAMP_NTZ, user_id STRING
)"""
# the staging table holds properties as JSON text, as the Parquet file does
CREATE_STAGING = """
CREATE TRANSIENT TABLE {name} (
    device_id STRING, distinct_id STRING, event_name STRING, insert_id STRING,
    properties STRING, time TIMESTAMP_NTZ, user_id STRING
)"""
INSERT_FROM_STAGING = """
INSERT INTO mp_master_event
SELECT device_id, distinct_id, event_name, insert_id, PARSE_JSON(properties), time, user_id
FROM {staging} WHERE TO_DATE(time) = %(day)s"""


@pytest.fixture
def database(snowflake_server: SnowflakeServer) -> Iterator[str]:
    """A fresh database with schema RAW, created the way a destination would (emulator state is shared)."""
    name = unique_name()
    with snowflake_server.credentials().get_client() as conn:
        run(conn, f"CREATE DATABASE {name}")
        run(conn, f"CREATE SCHEMA {name}.{SCHEMA}")
    yield name


@pytest.fixture
def connector(snowflake_server: SnowflakeServer, database: str) -> Iterator[SnowflakeConnector]:
    with snowflake_server.connector(database, SCHEMA) as block:
        run(block.get_connection(), CREATE_EVENTS)
        yield block


def run(conn: SnowflakeConnection, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def events_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    table = pa.table(
        {
            "device_id": [r["device_id"] for r in rows],
            "distinct_id": [r["distinct_id"] for r in rows],
            "event_name": [r["event_name"] for r in rows],
            "insert_id": [r["insert_id"] for r in rows],
            "properties": [json.dumps(r["properties"]) for r in rows],
            "time": pa.array([r["time"] for r in rows], pa.timestamp("us")),
            "user_id": [r.get("user_id") for r in rows],
        }
    )
    pq.write_table(table, path)
    return path


def event(insert_id: str, time: datetime, **properties: Any) -> dict[str, Any]:
    return {
        "device_id": f"dev-{insert_id}",
        "distinct_id": f"user-{insert_id}",
        "event_name": "Page View",
        "insert_id": insert_id,
        "properties": {"$browser": "Chrome", "mp_lib": "web", "nested": {"x": [1, 2]}} | properties,
        "time": time,
        "user_id": None,
    }


def load_staging(conn: SnowflakeConnection, tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    """CREATE TEMPORARY STAGE + PUT + COPY INTO a transient staging table; returns its name."""
    staging = unique_name("MP_STAGING")
    parquet = events_parquet(tmp_path / "batch.parquet", rows)
    run(conn, "CREATE TEMPORARY STAGE mp_load")
    put = run(conn, f"PUT file://{parquet} @mp_load AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
    assert put[0][:2] == ("batch.parquet", "batch.parquet") and put[0][6] == "UPLOADED"
    run(conn, CREATE_STAGING.format(name=staging))
    copied = run(
        conn,
        f"COPY INTO {staging} FROM @mp_load FILE_FORMAT = (TYPE = PARQUET)"
        " MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE",
    )
    assert [(r[0], r[1], r[2]) for r in copied] == [("mp_load/batch.parquet", "LOADED", len(rows))]
    return staging


def test_database_schema_and_event_table_are_created(connector: SnowflakeConnector, database: str) -> None:
    conn = connector.get_connection()
    assert run(conn, "SELECT CURRENT_DATABASE(), CURRENT_SCHEMA()") == [(database, SCHEMA)]
    assert SCHEMA in [row[1] for row in run(conn, f"SHOW SCHEMAS IN DATABASE {database}")]
    columns = {row[0]: row[1] for row in run(conn, "DESCRIBE TABLE mp_master_event")}
    assert columns == {
        "DEVICE_ID": "VARCHAR(16777216)",
        "DISTINCT_ID": "VARCHAR(16777216)",
        "EVENT_NAME": "VARCHAR(16777216)",
        "INSERT_ID": "VARCHAR(16777216)",
        "PROPERTIES": "VARIANT",
        "TIME": "TIMESTAMP_NTZ(9)",
        "USER_ID": "VARCHAR(16777216)",
    }
    run(conn, CREATE_EVENTS)  # IF NOT EXISTS: a second run is a no-op
    assert len(run(conn, "DESCRIBE TABLE mp_master_event")) == 7


def test_put_copy_parquet_then_replace_one_day_in_a_transaction(
    connector: SnowflakeConnector, tmp_path: Path
) -> None:
    conn = connector.get_connection()
    # before: a stale row of the day (replaced) and a row of the next day (kept)
    run(
        conn,
        "INSERT INTO mp_master_event (insert_id, time) VALUES ('stale', '2024-01-01 08:00:00'),"
        " ('next-day', '2024-01-02 08:00:00')",
    )
    rows = [
        event("a", datetime(2024, 1, 1, 0, 0, 1)),
        event("b", datetime(2024, 1, 1, 23, 59, 59), **{"$browser": "Firefox"}),
        event("c", datetime(2024, 1, 2, 0, 0, 0)),  # another day: not part of this replacement
    ]
    staging = load_staging(conn, tmp_path, rows)
    assert run(conn, f"SELECT insert_id, time FROM {staging} ORDER BY 1")[0] == (
        "a",
        datetime(2024, 1, 1, 0, 0, 1),
    )
    # COPY remembers loaded files, as Snowflake does; FORCE loads again
    skipped = run(
        conn,
        f"COPY INTO {staging} FROM @mp_load FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE",
    )
    assert skipped[0][1] == "LOAD_SKIPPED"

    with conn.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("DELETE FROM mp_master_event WHERE TO_DATE(time) = %(day)s", {"day": DAY})
        assert cursor.rowcount == 1
        cursor.execute(INSERT_FROM_STAGING.format(staging=staging), {"day": DAY})
        assert cursor.rowcount == 2
        cursor.execute("COMMIT")

    assert run(
        conn,
        "SELECT insert_id, TYPEOF(properties), properties:mp_lib::string FROM mp_master_event ORDER BY 1",
    ) == [
        ("a", "JSON", "web"),  # TYPEOF says JSON where Snowflake says OBJECT
        ("b", "JSON", "web"),
        ("next-day", "JSON", None),  # even for a SQL NULL
    ]


def test_positional_copy_of_parquet_is_refused_as_in_snowflake(
    connector: SnowflakeConnector, tmp_path: Path
) -> None:
    conn = connector.get_connection()
    parquet = events_parquet(tmp_path / "batch.parquet", [event("a", datetime(2024, 1, 1))])
    run(conn, "CREATE TEMPORARY STAGE mp_load")
    run(conn, f"PUT file://{parquet} @mp_load")
    run(conn, CREATE_STAGING.format(name="staging_positional"))
    with pytest.raises(
        ProgrammingError, match="PARQUET file format can produce one and only one column"
    ) as info:
        run(conn, "COPY INTO staging_positional FROM @mp_load FILE_FORMAT = (TYPE = PARQUET)")
    assert info.value.errno == 2019


def test_copy_into_a_temporary_table_is_not_supported(connector: SnowflakeConnector, tmp_path: Path) -> None:
    conn = connector.get_connection()
    parquet = events_parquet(tmp_path / "batch.parquet", [event("a", datetime(2024, 1, 1))])
    run(conn, "CREATE TEMPORARY STAGE mp_load")
    run(conn, f"PUT file://{parquet} @mp_load")
    run(conn, "CREATE TEMPORARY TABLE tmp_staging LIKE mp_master_event")
    assert run(conn, "SELECT COUNT(*) FROM tmp_staging") == [(0,)]  # the table exists...
    with pytest.raises(ProgrammingError, match="Table with name TMP_STAGING does not exist"):
        # ...but COPY looks it up as DATABASE.SCHEMA.TABLE, where DuckDB has no temporary tables
        run(
            conn,
            "COPY INTO tmp_staging FROM @mp_load FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE",
        )


def test_copy_with_a_select_transform_needs_a_column_list(
    connector: SnowflakeConnector, tmp_path: Path
) -> None:
    """Straight from the stage into the event table, without a staging table: works with a column list."""
    conn = connector.get_connection()
    parquet = events_parquet(tmp_path / "batch.parquet", [event("a", datetime(2024, 1, 1, 12))])
    run(conn, "CREATE TEMPORARY STAGE mp_load")
    run(conn, f"PUT file://{parquet} @mp_load")
    copied = run(
        conn,
        "COPY INTO mp_master_event (insert_id, properties, time)"
        " FROM (SELECT $1:insert_id, PARSE_JSON($1:properties), $1:time FROM @mp_load)"
        " FILE_FORMAT = (TYPE = PARQUET)",
    )
    assert copied[0][1:3] == ("LOADED", 1)
    assert run(conn, "SELECT insert_id, properties:mp_lib::string, time, device_id FROM mp_master_event") == [
        ("a", "web", datetime(2024, 1, 1, 12), None)
    ]
    # a TIMESTAMP column left out of the list gets 1970-01-01, not NULL (a fakesnow bug)
    run(
        conn,
        "COPY INTO mp_master_event (insert_id) FROM (SELECT $1:insert_id FROM @mp_load)"
        " FILE_FORMAT = (TYPE = PARQUET) FORCE = TRUE",
    )
    assert run(conn, "SELECT time FROM mp_master_event WHERE properties IS NULL") == [(datetime(1970, 1, 1),)]
    with pytest.raises(ProgrammingError, match="has 7 columns but 1 values were supplied"):
        run(
            conn,
            "COPY INTO mp_master_event FROM (SELECT $1:insert_id FROM @mp_load)"
            " FILE_FORMAT = (TYPE = PARQUET) FORCE = TRUE",
        )


def test_failure_between_delete_and_commit_then_rollback_keeps_the_table(
    connector: SnowflakeConnector, tmp_path: Path
) -> None:
    conn = connector.get_connection()
    staging = load_staging(conn, tmp_path, [event("a", datetime(2024, 1, 1, 12))])
    run(conn, INSERT_FROM_STAGING.format(staging=staging), {"day": DAY})
    before = run(conn, "SELECT insert_id, properties:mp_lib::string FROM mp_master_event")
    assert before == [("a", "web")]

    run(conn, "BEGIN")
    run(conn, "DELETE FROM mp_master_event WHERE TO_DATE(time) = %(day)s", {"day": DAY})
    assert run(conn, "SELECT COUNT(*) FROM mp_master_event") == [(0,)]
    with pytest.raises(ProgrammingError, match="NO_SUCH_COLUMN"):
        run(conn, f"INSERT INTO mp_master_event SELECT no_such_column FROM {staging}")
    run(conn, "ROLLBACK")
    assert run(conn, "SELECT insert_id, properties:mp_lib::string FROM mp_master_event") == before


def test_uncommitted_delete_is_invisible_to_other_sessions(
    snowflake_server: SnowflakeServer, connector: SnowflakeConnector, database: str
) -> None:
    conn = connector.get_connection()
    run(conn, "INSERT INTO mp_master_event (insert_id, time) VALUES ('a', '2024-01-01 12:00:00')")
    with snowflake_server.credentials().get_client(database=database, schema=SCHEMA) as other:
        run(conn, "BEGIN")
        run(conn, "DELETE FROM mp_master_event")
        assert run(other, "SELECT COUNT(*) FROM mp_master_event") == [(1,)]
        run(conn, "COMMIT")
        assert run(other, "SELECT COUNT(*) FROM mp_master_event") == [(0,)]


def test_a_failed_statement_aborts_the_transaction_until_rollback(
    snowflake_server: SnowflakeServer, connector: SnowflakeConnector, database: str
) -> None:
    """Snowflake rolls back only the failed statement; DuckDB refuses everything until ROLLBACK.

    fakesnow answers those refusals with HTTP 500, retried by the connector until network_timeout.
    """
    with snowflake_server.credentials(network_timeout=6).get_client(database=database, schema=SCHEMA) as conn:
        run(conn, "BEGIN")
        with pytest.raises(ProgrammingError):
            run(conn, "SELECT no_such_column FROM mp_master_event")
        started = time.monotonic()
        with pytest.raises(InternalServerError, match="HTTP 500"):
            run(conn, "SELECT 1")
        assert time.monotonic() - started < 30
        run(conn, "ROLLBACK")
        assert run(conn, "SELECT 1") == [(1,)]


def test_ddl_inside_a_transaction_is_rolled_back(connector: SnowflakeConnector) -> None:
    """In Snowflake DDL commits the open transaction; in fakesnow it is part of it."""
    conn = connector.get_connection()
    run(conn, "BEGIN")
    run(conn, "CREATE TABLE made_in_transaction (a INT)")
    run(conn, "ROLLBACK")
    with pytest.raises(ProgrammingError, match="MADE_IN_TRANSACTION does not exist"):
        run(conn, "SELECT * FROM made_in_transaction")


def test_paramstyles(snowflake_server: SnowflakeServer, connector: SnowflakeConnector, database: str) -> None:
    conn = connector.get_connection()
    run(conn, "INSERT INTO mp_master_event (insert_id, time) VALUES ('a', '2024-01-01 12:00:00')")
    # the default, pyformat: the connector interpolates client-side
    assert run(conn, "SELECT insert_id FROM mp_master_event WHERE TO_DATE(time) = %(day)s", {"day": DAY}) == [
        ("a",)
    ]
    assert run(conn, "SELECT insert_id FROM mp_master_event WHERE TO_DATE(time) = %s", (DAY,)) == [("a",)]
    with pytest.raises(TypeError, match="not all arguments converted"):
        run(conn, "SELECT insert_id FROM mp_master_event WHERE TO_DATE(time) = ?", (DAY,))
    # qmark and numeric bind server-side; the credentials block forwards paramstyle to connect()
    for paramstyle, marker in [("qmark", "?"), ("numeric", ":1")]:
        with snowflake_server.connector(database, SCHEMA, paramstyle=paramstyle) as block:
            sql = f"SELECT insert_id FROM mp_master_event WHERE TO_DATE(time) = {marker}"
            assert block.fetch_all(sql, [DAY]) == [("a",)]


def test_timestamp_tz_round_trips_and_to_date(connector: SnowflakeConnector) -> None:
    conn = connector.get_connection()
    run(conn, "CREATE TABLE times (tz TIMESTAMP_TZ, ntz TIMESTAMP_NTZ)")
    aware = datetime(2024, 1, 1, 23, 30, tzinfo=UTC)
    run(conn, "INSERT INTO times VALUES (%(tz)s, %(ntz)s)", {"tz": aware, "ntz": aware.replace(tzinfo=None)})
    assert run(conn, "SELECT tz, ntz, TO_DATE(tz) FROM times WHERE TO_DATE(ntz) = %(day)s", {"day": DAY}) == [
        (aware, datetime(2024, 1, 1, 23, 30), DAY)
    ]


def test_json_with_dollar_keys_needs_server_side_binding(
    snowflake_server: SnowflakeServer, connector: SnowflakeConnector, database: str
) -> None:
    """fakesnow reads any ``$word`` in the SQL text, even inside a string, as a session variable."""
    properties = json.dumps({"$browser": "Chrome", "mp_lib": "web"})
    conn = connector.get_connection()
    with pytest.raises(ProgrammingError, match=r"Session variable '\$BROWSER' does not exist"):
        run(
            conn,
            "INSERT INTO mp_master_event (insert_id, properties) SELECT 'a', PARSE_JSON(%(p)s)",
            {"p": properties},
        )
    with snowflake_server.connector(database, SCHEMA, paramstyle="qmark") as block:
        block.execute(
            "INSERT INTO mp_master_event (insert_id, properties) SELECT 'a', PARSE_JSON(?)", [properties]
        )
        assert block.fetch_all("SELECT properties:mp_lib::string FROM mp_master_event") == [("web",)]


def test_variant_json_access(
    connector: SnowflakeConnector, tmp_path: Path, snowflake_server: SnowflakeServer, database: str
) -> None:
    conn = connector.get_connection()
    staging = load_staging(conn, tmp_path, [event("a", datetime(2024, 1, 1, 12))])
    run(conn, INSERT_FROM_STAGING.format(staging=staging), {"day": DAY})
    assert run(
        conn,
        "SELECT properties:mp_lib::string, properties:\"mp_lib\"::string, properties['mp_lib']::string,"
        " GET_PATH(properties, 'nested.x[1]')::int, properties:nested.x[0]::int FROM mp_master_event",
    ) == [("web", "web", "web", 2, 1)]
    # Mixpanel's $-keys cannot be written in the SQL text at all...
    for expression in ['properties:"$browser"::string', "GET_PATH(properties, '\"$browser\"')::string"]:
        with pytest.raises(ProgrammingError, match=r"Session variable '\$BROWSER' does not exist"):
            run(conn, f"SELECT {expression} FROM mp_master_event")
    # ...and a bound key reaches the value but ::string keeps the JSON quotes (Snowflake: Chrome)
    with snowflake_server.connector(database, SCHEMA, paramstyle="qmark") as block:
        assert block.fetch_all("SELECT properties[?]::string FROM mp_master_event", ["$browser"]) == [
            ('"Chrome"',)
        ]


def test_swap_with_is_not_supported_rename_and_create_or_replace_are(connector: SnowflakeConnector) -> None:
    conn = connector.get_connection()
    run(conn, "INSERT INTO mp_master_event (insert_id) VALUES ('old')")
    run(conn, "CREATE TABLE mp_master_event_new LIKE mp_master_event")
    run(conn, "INSERT INTO mp_master_event_new (insert_id) VALUES ('new')")
    with pytest.raises(ProgrammingError, match='syntax error at or near "SWAP"') as info:
        run(conn, "ALTER TABLE mp_master_event_new SWAP WITH mp_master_event")
    assert info.value.errno == 1003
    # the replacement that works: two renames in one transaction
    run(conn, "BEGIN")
    run(conn, "ALTER TABLE mp_master_event RENAME TO mp_master_event_old")
    run(conn, "ALTER TABLE mp_master_event_new RENAME TO mp_master_event")
    run(conn, "DROP TABLE mp_master_event_old")
    run(conn, "COMMIT")
    assert run(conn, "SELECT insert_id FROM mp_master_event") == [("new",)]
    run(conn, "CREATE OR REPLACE TABLE mp_master_event AS SELECT 'replaced' AS insert_id")
    assert run(conn, "SELECT insert_id FROM mp_master_event") == [("replaced",)]


def test_merge_needs_the_source_columns_prepared_in_a_subquery(connector: SnowflakeConnector) -> None:
    conn = connector.get_connection()
    run(conn, "CREATE TABLE src (insert_id STRING, properties STRING)")
    run(conn, "INSERT INTO src VALUES ('a', '{\"n\": 1}')")
    with pytest.raises(ProgrammingError, match='does not have a column named "PROPERTIES"'):
        run(
            conn,
            "MERGE INTO mp_master_event t USING src s ON t.insert_id = s.insert_id"
            " WHEN NOT MATCHED THEN INSERT (insert_id, properties) VALUES (s.insert_id, PARSE_JSON(s.properties))",
        )
    merged = run(
        conn,
        "MERGE INTO mp_master_event t USING (SELECT insert_id, PARSE_JSON(properties) AS p FROM src) s"
        " ON t.insert_id = s.insert_id WHEN MATCHED THEN UPDATE SET properties = s.p"
        " WHEN NOT MATCHED THEN INSERT (insert_id, properties) VALUES (s.insert_id, s.p)",
    )
    assert merged == [(1, 0)]
    assert run(conn, "SELECT properties:n::int FROM mp_master_event") == [(1,)]


def test_connector_block_execute_and_fetch_all(connector: SnowflakeConnector) -> None:
    # execute() goes through execute_async and polls the query status: it works over HTTP
    connector.execute(
        "INSERT INTO mp_master_event (insert_id, time) VALUES (%(id)s, %(t)s)",
        {"id": "x", "t": datetime(2024, 1, 1, 12)},
    )
    assert connector.fetch_all("SELECT insert_id, time FROM mp_master_event") == [
        ("x", datetime(2024, 1, 1, 12))
    ]


def test_wrong_password_is_accepted(snowflake_server: SnowflakeServer) -> None:
    """fakesnow has no authentication: a bad password cannot be tested against it."""
    with snowflake_server.credentials(password="wrong").get_client() as conn:
        assert run(conn, "SELECT 1") == [(1,)]
    # what can be tested: no password at all (the block refuses) and no server (the connector gives up)
    with pytest.raises(ValidationError, match="One of the authentication keys must be provided"):
        snowflake_server.credentials(password=None)  # type: ignore[arg-type]
    unreachable = snowflake_server.credentials(port=free_port(), login_timeout=5)
    with pytest.raises(OperationalError, match="Could not connect to Snowflake backend") as info:
        unreachable.get_client()
    assert info.value.errno == 250001


def test_missing_schema(snowflake_server: SnowflakeServer, database: str) -> None:
    # connecting with a schema that does not exist creates it (Snowflake would not)
    with snowflake_server.connector(database, "NOT_THERE") as block:
        conn = block.get_connection()
        assert run(conn, "SELECT CURRENT_SCHEMA()") == [("NOT_THERE",)]
        assert "NOT_THERE" in [row[1] for row in run(conn, f"SHOW SCHEMAS IN DATABASE {database}")]
        # a qualified name in a missing schema: errno 2003 as in Snowflake, but DuckDB's message
        with pytest.raises(ProgrammingError, match='schema "MISSING" does not exist') as info:
            run(conn, "SELECT * FROM missing.mp_master_event")
        assert (info.value.errno, info.value.sqlstate) == (2003, "42S02")
        with pytest.raises(ProgrammingError, match="SET schema: No catalog \\+ schema named") as info:
            run(conn, f"USE SCHEMA {database}.MISSING")
        assert info.value.errno == 2003
