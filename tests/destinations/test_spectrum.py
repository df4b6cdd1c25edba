"""Redshift Spectrum: S3 files (moto) plus Glue partitions that follow the committed days exactly.

moto serves Glue beside S3 (catalog state asserted here); the SQL semantics of the files a partition
names are checked with DuckDB over the same Parquet files (moto's Redshift answers canned rows).
"""

from __future__ import annotations

import io

import duckdb
import polars as pl
import pytest

from blocks.destinations.spectrum import RedshiftSpectrumDestination
from sandbox import SandboxServer
from tasks.errors import FatalError, TableIdentityError
from tasks.lake.commit import Lake
from tasks.lake.tables import replace_table
from tasks.schema import MAPPINGS_SCHEMA, MAPPINGS_TABLE
from tasks.warehouses.glue import GlueCatalog
from tasks.warehouses.warehouse import WarehouseHook
from tests.conftest import recent_days
from tests.kit.destinations import export
from tests.kit.warehouses import glue_database
from tests.stores.s3 import S3Server, make_s3_destination


@pytest.fixture
def block(s3_server: S3Server) -> RedshiftSpectrumDestination:
    return RedshiftSpectrumDestination(
        s3=make_s3_destination(s3_server, prefix="raw"), glue_database=glue_database(s3_server)
    )


def catalog_of(lake: Lake) -> GlueCatalog:
    """The Glue catalog the destination's commits keep in step."""
    (hook,) = lake.hooks
    assert isinstance(hook, WarehouseHook) and isinstance(hook.loader, GlueCatalog)
    return hook.loader


def symlinked(lake: Lake, location: str) -> list[str]:
    prefix = lake.describe("")
    body = lake.storage.get_bytes(location[len(prefix) :] + "symlink.txt")
    assert body is not None, f"no symlink manifest at {location}"
    return body.decode().splitlines()


def test_partitions_follow_exactly_the_committed_days(
    sandbox: SandboxServer, block: RedshiftSpectrumDestination
) -> None:
    lake = block.connect(1)
    catalog = catalog_of(lake)
    assert isinstance(catalog, GlueCatalog)
    days = recent_days(3, sandbox)
    export(sandbox, block, days, "first")
    export(sandbox, block, days[1:], "second")  # two days replaced
    locations = catalog.partitions("mp_master_event")
    assert sorted(locations) == [d.isoformat() for d in days]
    for day in days:
        manifest = lake.manifest("mp_master_event", day.isoformat())
        assert manifest is not None
        assert locations[day.isoformat()].endswith(f"/mp_date={day.isoformat()}/{manifest.run_id}/")
        assert symlinked(lake, locations[day.isoformat()]) == [lake.describe(f.key) for f in manifest.files]
        assert catalog.loaded_run("mp_master_event", day.isoformat()) == manifest.run_id
    spectrum = lake.storage.list("1/_state/spectrum/mp_master_event/")
    assert len({i.key.rsplit("/", 2)[0] for i in spectrum}) == 3, (
        "one symlink folder per day: old ones removed"
    )


def test_the_files_a_partition_names_answer_the_spectrum_query(
    sandbox: SandboxServer, block: RedshiftSpectrumDestination
) -> None:
    lake = block.connect(1)
    days = recent_days(2, sandbox)
    export(sandbox, block, days, "sql")
    locations = catalog_of(lake).partitions("mp_master_event")
    prefix = lake.describe("")
    frames = []
    for day, location in locations.items():
        for uri in symlinked(lake, location):
            data = lake.storage.get_bytes(uri[len(prefix) :]) or b""
            frames.append(pl.read_parquet(io.BytesIO(data)).with_columns(mp_date=pl.lit(day)))
    events = pl.concat(frames)  # what Spectrum reads: the partition column plus the files' columns
    # the README's query, in DuckDB's dialect: json_extract_path_text(properties, '$browser') ≙ ->> '$."$browser"'
    con = duckdb.connect()
    con.register("events", events.to_arrow())
    rows = con.execute(
        """SELECT mp_date, COUNT(*), COUNT(properties->>'$."$browser"') FROM events GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    expected = sandbox.expected(days[0], days[-1])
    assert [(d, n) for d, n, _ in rows] == [(d.isoformat(), expected[d.isoformat()]["rows"]) for d in days]
    assert all(0 < browsers <= n for _, n, browsers in rows)


def test_whole_tables_switch_their_location(block: RedshiftSpectrumDestination) -> None:
    lake = block.connect(1)
    frame = pl.DataFrame({"distinct_id": ["a", "b"], "resolved_distinct_id": ["a", "a"]})
    for run in ("one", "two"):
        replace_table(lake, MAPPINGS_TABLE, MAPPINGS_SCHEMA, [frame], run, "resolved_distinct_id")
    manifest = lake.manifest(MAPPINGS_TABLE, "all")
    assert manifest is not None
    table = catalog_of(lake).glue.get_table(DatabaseName=block.glue_database, Name=MAPPINGS_TABLE)["Table"]
    location = table["StorageDescriptor"]["Location"]
    assert location.endswith("/mp_identity_mappings_data/table/two/")
    assert symlinked(lake, location) == [lake.describe(f.key) for f in manifest.files]
    assert table["Parameters"]["mp_run_id"] == "two"


def test_a_missing_glue_database_fails_before_any_request(s3_server: S3Server) -> None:
    block = RedshiftSpectrumDestination(s3=make_s3_destination(s3_server), glue_database="no_such_db")
    with pytest.raises(FatalError, match=r"^the Glue database no_such_db does not exist: create it"):
        block.connect(1)


def test_a_glue_database_name_is_checked() -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        RedshiftSpectrumDestination.model_validate(
            {"s3": {"bucket": {"bucket_name": "b"}}, "glue_database": "x; DROP"}
        )


# containment: nothing outside the destination's own _state/spectrum/<table>/ is ever deleted ------------


def bucket_objects(server: S3Server, bucket: str) -> dict[str, bytes]:
    client = server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


@pytest.mark.parametrize(
    "where",
    [
        "",  # the bucket itself (shorter than raw/)
        "team/",  # another team's folder
        "raw/1/_state/spectrum/mp_people_data_old/",  # a sibling whose name starts with the table's
        "raw/1/_state/spectrum/mp_people_data/../../../../team/",  # a path that leaves the folder
        "raw/2/_state/spectrum/mp_people_data/",  # another project's table
    ],
)
def test_an_existing_glue_table_located_outside_the_destination_is_refused(
    sandbox: SandboxServer, s3_server: S3Server, block: RedshiftSpectrumDestination, where: str
) -> None:
    block.connect(1)
    export(sandbox, block, recent_days(1, sandbox), "first")
    bucket = block.s3.bucket.bucket_name
    s3_server.client().put_object(Bucket=bucket, Key="team/theirs.parquet", Body=b"another team's data")
    table = s3_server.client("glue").get_table(DatabaseName=block.glue_database, Name="mp_people_data")[
        "Table"
    ]
    table["StorageDescriptor"]["Location"] = f"s3://{bucket}/{where}"
    table_input = {
        k: table[k] for k in ("Name", "StorageDescriptor", "PartitionKeys", "TableType", "Parameters")
    }
    s3_server.client("glue").update_table(DatabaseName=block.glue_database, TableInput=table_input)
    before = bucket_objects(s3_server, bucket)
    with pytest.raises(TableIdentityError) as caught:
        block.connect(1)
    message = str(caught.value)
    assert message.startswith(
        f"the Glue table {block.glue_database}.mp_people_data is located at s3://{bucket}/"
    )
    assert "outside this destination's" in message and "drop that table" in message
    assert bucket_objects(s3_server, bucket) == before


def test_a_day_partition_located_elsewhere_is_switched_but_never_cleaned(
    sandbox: SandboxServer, s3_server: S3Server, block: RedshiftSpectrumDestination
) -> None:
    block.connect(1)
    (day,) = days = recent_days(1, sandbox)
    export(sandbox, block, days, "first")
    bucket = block.s3.bucket.bucket_name
    s3_server.client().put_object(Bucket=bucket, Key="team/theirs.parquet", Body=b"another team's data")
    partition = s3_server.client("glue").get_partition(
        DatabaseName=block.glue_database, TableName="mp_master_event", PartitionValues=[day.isoformat()]
    )["Partition"]
    for location in (f"s3://{bucket}/", f"s3://{bucket}/team/", f"s3://{bucket}/raw/"):
        partition["StorageDescriptor"]["Location"] = location
        s3_server.client("glue").update_partition(
            DatabaseName=block.glue_database,
            TableName="mp_master_event",
            PartitionValueList=[day.isoformat()],
            PartitionInput={k: partition[k] for k in ("Values", "StorageDescriptor", "Parameters")},
        )
        before = bucket_objects(s3_server, bucket)
        export(sandbox, block, days, f"again{len(location)}")
        after = bucket_objects(s3_server, bucket)
        removed = set(before) - set(after)
        # only the day's own replaced files (its data and its identity edges) are removed
        assert all(
            k.startswith(("raw/1/mp_master_event/", "raw/1/_state/identity_edges/")) for k in removed
        ), removed
        assert after["team/theirs.parquet"] == b"another team's data"


def test_the_first_whole_table_load_keeps_its_symlink_manifest(block: RedshiftSpectrumDestination) -> None:
    lake = block.connect(1)
    frame = pl.DataFrame({"distinct_id": ["a", "b"], "resolved_distinct_id": ["a", "a"]})
    replace_table(lake, MAPPINGS_TABLE, MAPPINGS_SCHEMA, [frame], "one", "resolved_distinct_id")
    manifest = lake.manifest(MAPPINGS_TABLE, "all")
    assert manifest is not None
    table = catalog_of(lake).glue.get_table(DatabaseName=block.glue_database, Name=MAPPINGS_TABLE)["Table"]
    location = table["StorageDescriptor"]["Location"]
    assert location.endswith("/mp_identity_mappings_data/table/one/")
    assert symlinked(lake, location) == [lake.describe(f.key) for f in manifest.files]
