"""Iceberg's own quirks (the scenarios every destination shares run in test_destination_scenarios): its
schema, upkeep, a Glue catalog on moto, reconcile beside Delta, and one identity per table in a catalog."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from pyiceberg.catalog import load_catalog

from blocks.destinations.iceberg import IcebergDestination
from blocks.destinations.local import LocalDestination
from blocks.destinations.s3 import S3Destination
from sandbox import SandboxServer
from tasks.errors import TableIdentityError
from tasks.schema import EVENTS_TABLE
from tasks.warehouses.iceberg_format import HELD, catalog_properties
from tasks.warehouses.table_identity import owner_key
from tasks.warehouses.tableformat import SCHEMAS, format_hook, reader
from tests.conftest import credentials_for, recent_days
from tests.kit.destinations import (
    IcebergTarget,
    export,
    local_delta,
    local_iceberg,
    race,
    reading,
    sandbox_day,
)
from tests.stores.s3 import S3Server, make_s3_destination


def assert_day_is_the_sandbox(warehouse: IcebergTarget, sandbox: SandboxServer, day: date) -> None:
    assert set(warehouse.readings(day)) == {sandbox_day(sandbox, day)}


def test_properties_are_the_exported_text(sandbox: SandboxServer, tmp_path: Path) -> None:
    warehouse = local_iceberg(tmp_path)
    (day,) = recent_days(1, sandbox)
    export(sandbox, warehouse.block, [day], "types")
    schema = warehouse.table().scan().to_arrow().schema
    assert schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("properties").type in (pa.string(), pa.large_string())
    files_frame = pl.read_parquet(list((tmp_path / "dest" / "1" / "mp_master_event").rglob("*.parquet")))
    key = ["insert_id", "event_name", "properties"]
    assert warehouse.frame(day).select(key).sort(key).equals(files_frame.select(key).sort(key))


def test_upkeep_compacts_a_day_of_many_files_and_expires_old_snapshots(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    warehouse = local_iceberg(tmp_path)
    warehouse.block.retention_hours = 0
    (day,) = recent_days(1, sandbox)
    export(sandbox, warehouse.block, [day], "one")
    lake = warehouse.block.connect(1)
    manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
    hook = format_hook(lake)
    assert manifest is not None and hook is not None
    for _ in range(3):  # three more files in the day, as hourly increments leave them
        rows = reader(lake, EVENTS_TABLE, day.isoformat(), manifest, manifest.files)
        hook.table_format.append(EVENTS_TABLE, day.isoformat(), manifest, rows)
    before = warehouse.frame(day)
    assert len(warehouse.table().inspect.files()) == 4

    report = hook.table_format.upkeep()

    assert report["days_compacted"] == 1
    table = warehouse.table()
    assert len(table.inspect.files()) == 1 and len(table.snapshots()) == 1
    key = ["insert_id", "properties"]
    assert warehouse.frame(day).select(key).sort(key).equals(before.select(key).sort(key))
    assert warehouse.held(day) == manifest.sequence
    data = {p.name for p in (tmp_path / "dest" / "1" / "iceberg" / EVENTS_TABLE / "data").rglob("*.parquet")}
    assert data == {Path(f).name for f in table.inspect.files()["file_path"].to_pylist()}


def test_a_glue_catalog_on_moto_holds_the_tables(sandbox: SandboxServer, s3_server: S3Server) -> None:
    files_block = make_s3_destination(s3_server, prefix="lake")
    block = IcebergDestination(files=files_block, catalog="glue", namespace="mixpanel")
    days = recent_days(2, sandbox)
    export(sandbox, block, days, "first")
    export(sandbox, block, days, "second")
    location = files_block.table_location(1, "iceberg", "iceberg")
    options = location.options | {"s3.endpoint": s3_server.moto_url, "glue.endpoint": s3_server.moto_url}
    options |= {
        "glue.access-key-id": s3_server.access_key_id,
        "glue.secret-access-key": s3_server.secret_access_key,
    }
    options |= {"glue.region": "us-east-1"}
    properties = catalog_properties("glue", "", location.uri, options)
    polars = {k.lower(): v for k, v in files_block.table_location(1, "iceberg", "delta").options.items()}
    reader = IcebergTarget(block, properties, polars | {"aws_endpoint_url": s3_server.moto_url})
    glue = s3_server.client("glue").get_table(DatabaseName="mixpanel", Name=EVENTS_TABLE)["Table"]
    assert glue["Parameters"]["table_type"] == "ICEBERG", "Athena and Spark find it as an Iceberg table"
    lake = block.connect(1)
    for day in days:
        assert_day_is_the_sandbox(reader, sandbox, day)
        manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
        assert manifest is not None and reader.held(day) == manifest.sequence
    errors = race(sandbox, block, days[1], ["racer-a", "racer-b"])
    assert not errors, errors
    assert_day_is_the_sandbox(reader, sandbox, days[1])


@pytest.mark.usefixtures("prefect_server")
def test_reconcile_replaces_only_the_changed_day_in_delta_and_iceberg(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    import time

    from flows.events import events
    from flows.reconcile import reconcile

    warehouse = local_iceberg(tmp_path / "iceberg")
    lake = local_delta(tmp_path / "delta")
    credentials = credentials_for(sandbox)
    days = recent_days(4, sandbox)
    for block in (warehouse.block, lake.block):
        events(credentials, block, from_date=days[0], to_date=days[-1])
    snapshots = len(warehouse.table().snapshots())
    version = lake.table().version()
    late_day = days[-2]
    assert sandbox.add_events(late_day, 25, processed_at_ms=int(time.time() * 1000)) == 25

    rows = reconcile(credentials, [warehouse.block, lake.block], lookback_days=4, settle_hours=0)

    assert {r["day"] for r in rows} == {late_day.isoformat()} and len(rows) == 2
    for day in days:
        assert_day_is_the_sandbox(warehouse, sandbox, day)
        assert reading(lake.frame(day)) == sandbox_day(sandbox, day)
    assert lake.table().version() == version + 1, "one Delta commit: the changed day"
    assert warehouse.commits()[-1]["mp.partition"] == late_day.isoformat()
    assert len(warehouse.table().snapshots()) - snapshots == 2, (
        "one catalog commit (delete + append snapshots)"
    )


# one identity per table: a catalog finds tables by name, so a second destination must be refused ---------


def catalog_state(properties: dict[str, str], namespace: str = "mixpanel") -> dict[str, object]:
    """Per table: where it is, its snapshots (ids, current) and its properties (the held versions)."""
    catalog = load_catalog("mixpanel", **properties)
    state: dict[str, object] = {}
    for name in SCHEMAS:
        table = catalog.load_table((namespace, name))
        current = table.current_snapshot()
        state[name] = (
            table.metadata.location,
            table.metadata_location,
            [s.snapshot_id for s in table.snapshots()],
            current and current.snapshot_id,
            dict(table.properties),
        )
    return state


def test_a_second_destination_on_one_sql_catalog_and_namespace_is_refused_and_changes_nothing(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    shared = f"sqlite:///{tmp_path / 'shared-catalog.db'}"
    first = IcebergDestination(
        files=LocalDestination(path=str(tmp_path / "a"), create_missing=True), catalog_uri=shared
    )
    (day,) = recent_days(1, sandbox)
    export(sandbox, first, [day], "project-1")  # project 1 on root a
    properties = catalog_properties("sql", shared, str(tmp_path / "a" / "1" / "iceberg"), {})
    before = catalog_state(properties)
    files_before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert IcebergTarget(first, properties, None).held(day) is not None

    second = IcebergDestination(
        files=LocalDestination(path=str(tmp_path / "b"), create_missing=True), catalog_uri=shared
    )
    with pytest.raises(TableIdentityError) as caught:
        second.connect(2)  # project 2 on root b, the same catalog and namespace

    message = str(caught.value)
    theirs, ours = tmp_path / "a" / "1" / "iceberg", tmp_path / "b" / "2" / "iceberg"
    assert message.startswith(
        f"the Iceberg table mixpanel.{EVENTS_TABLE} is located at {theirs}/{EVENTS_TABLE}"
    )
    assert f"outside this destination's {ours}/{EVENTS_TABLE}" in message
    assert "another namespace" in message and message.count(". ") == 0
    assert catalog_state(properties) == before
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == files_before
    assert not list((tmp_path / "b").rglob("*.parquet")), "nothing of project 2 was written"


def test_a_second_destination_on_one_glue_namespace_is_refused_and_changes_nothing(
    sandbox: SandboxServer, s3_server: S3Server
) -> None:
    namespace = f"mixpanel_{uuid.uuid4().hex[:8]}"
    first_files = make_s3_destination(s3_server, prefix="root-a")
    first = IcebergDestination(files=first_files, catalog="glue", namespace=namespace)
    (day,) = recent_days(1, sandbox)
    export(sandbox, first, [day], "project-1")
    location = first_files.table_location(1, "iceberg", "iceberg")
    options = location.options | {"s3.endpoint": s3_server.moto_url, "glue.endpoint": s3_server.moto_url}
    options |= {
        "glue.access-key-id": s3_server.access_key_id,
        "glue.secret-access-key": s3_server.secret_access_key,
        "glue.region": "us-east-1",
    }
    properties = catalog_properties("glue", "", location.uri, options)
    client = s3_server.client()

    def objects() -> dict[str, str]:
        listed = client.list_objects_v2(Bucket=first_files.bucket.bucket_name).get("Contents", [])
        return {o["Key"]: o["ETag"] for o in listed}

    before, files_before = catalog_state(properties, namespace), objects()

    second_files = make_s3_destination(s3_server, prefix="root-b")
    second = IcebergDestination(files=second_files, catalog="glue", namespace=namespace)
    with pytest.raises(TableIdentityError, match=r"^the Iceberg table .* is located at s3://.*/root-a/1/"):
        second.connect(2)

    assert catalog_state(properties, namespace) == before
    assert objects() == files_before
    listed = client.list_objects_v2(Bucket=second_files.bucket.bucket_name, Prefix="root-b/2/iceberg/")
    assert listed.get("KeyCount", 0) == 0, "no table of project 2 was created"


def test_held_versions_are_keyed_by_the_destination_and_another_ones_is_never_read(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    warehouse = local_iceberg(tmp_path)
    (day,) = recent_days(1, sandbox)
    export(sandbox, warehouse.block, [day], "one")
    lake = warehouse.block.connect(1)
    manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None and warehouse.held(day) == manifest.sequence
    ours = f"{HELD}{owner_key(str(tmp_path / 'dest' / '1' / 'iceberg'))}.{day.isoformat()}"
    theirs = f"{HELD}{owner_key('s3://elsewhere/lake/2/iceberg')}.{day.isoformat()}"
    with warehouse.table().transaction() as tx:  # as a table written before the key existed looks
        tx.remove_properties(ours)
        tx.set_properties({f"{HELD}{day.isoformat()}": str(manifest.sequence), theirs: "99"})

    lake = warehouse.block.connect(1)  # the unkeyed value is moved to this destination's key
    properties = warehouse.table().properties
    assert f"{HELD}{day.isoformat()}" not in properties and properties[ours] == str(manifest.sequence)

    with warehouse.table().transaction() as tx:  # only another destination's value is left
        tx.remove_properties(ours)
    hook = format_hook(lake)
    assert hook is not None and hook.table_format.held(EVENTS_TABLE, day.isoformat()) is None
    lake.repair(EVENTS_TABLE, day.isoformat())  # the day is reloaded, not taken as held
    assert warehouse.held(day) == manifest.sequence and warehouse.table().properties[theirs] == "99"
    assert_day_is_the_sandbox(warehouse, sandbox, day)


def test_the_default_catalog_of_a_bucket_root_is_its_own_and_a_former_shared_one_is_kept(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default catalogs live in the worker's data/
    bucket = make_s3_destination(s3_server).bucket.bucket_name
    registered = make_s3_destination(s3_server, bucket=bucket, prefix="registered")
    shared = tmp_path / "data" / "iceberg-catalog.db"
    shared.parent.mkdir()
    IcebergDestination(files=registered, catalog_uri=f"sqlite:///{shared}").connect(1)  # the former default

    def catalog_of(files: S3Destination) -> tuple[str, str]:
        hook = format_hook(IcebergDestination(files=files).connect(1))
        assert hook is not None
        table_format: Any = hook.table_format
        uri = table_format.catalog.properties["uri"]
        return uri, table_format.catalog.load_table(("mixpanel", EVENTS_TABLE)).metadata.location

    one, two = (make_s3_destination(s3_server, bucket=bucket, prefix=p) for p in ("root-a", "root-b"))
    (uri_one, at_one), (uri_two, at_two) = catalog_of(one), catalog_of(two)
    assert uri_one != uri_two and f"sqlite:///{shared}" not in (uri_one, uri_two)
    assert (at_one, at_two) == (
        f"s3://{bucket}/root-a/1/iceberg/{EVENTS_TABLE}",
        f"s3://{bucket}/root-b/1/iceberg/{EVENTS_TABLE}",
    )
    assert catalog_of(registered)[0] == f"sqlite:///{shared}", "tables it registers are not forgotten"
