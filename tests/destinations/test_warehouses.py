"""Warehouses' own quirks (the scenarios every destination shares run in test_destination_scenarios):
their JSON paths, the identity join, staging from a bucket, and the errors of a bad name or path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect_gcp import GcpCredentials

from blocks.destinations.bigquery import BigQueryWarehouse
from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.local import LocalDestination
from flows.identity import identity
from sandbox import SandboxServer
from sandbox.data import day_lines
from tasks.errors import FatalError
from tasks.warehouses.bigquery_loader import BigQueryLoader
from tasks.warehouses.warehouse import WarehouseHook
from tests.conftest import credentials_for, recent_days
from tests.kit.destinations import WarehouseTarget, export, sandbox_day
from tests.kit.expected import expected_simplified
from tests.kit.warehouses import WAREHOUSES, Warehouse
from tests.stores.s3 import make_s3_destination

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(params=list(WAREHOUSES))
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    return WAREHOUSES[request.param](tmp_path, request)


def test_properties_are_reachable_with_the_warehouse_json_path(
    sandbox: SandboxServer, warehouse: Warehouse
) -> None:
    (day,) = recent_days(1, sandbox)
    export(sandbox, warehouse.block, [day], "json")
    [(with_id, matching)] = warehouse.query(
        f"SELECT COUNT(distinct_id), SUM(CASE WHEN {warehouse.json_text} = distinct_id THEN 1 ELSE 0 END) "
        "FROM mp_master_event",
        [],
    )
    served = [json.loads(line)["properties"].get("distinct_id") for line in day_lines(sandbox.cfg, day)]
    assert with_id == matching == sum(1 for i in served if i is not None)


def test_the_identity_join_counts_the_sandbox_users(sandbox: SandboxServer, warehouse: Warehouse) -> None:
    days = recent_days(3, sandbox)
    export(sandbox, warehouse.block, days, "users")
    identity(credentials_for(sandbox), warehouse.block)
    [(users,)] = warehouse.query(
        """SELECT COUNT(DISTINCT COALESCE(m.resolved_distinct_id, e.distinct_id))
           FROM mp_master_event e LEFT JOIN mp_identity_mappings_data m ON e.distinct_id = m.distinct_id
           WHERE e.distinct_id <> ''""",
        [],
    )
    truth = expected_simplified(sandbox, days)
    served = {
        json.loads(line)["properties"].get("distinct_id")
        for day in days
        for line in day_lines(sandbox.cfg, day)
    }
    assert users == len({truth.get(i, i) for i in served if i})


def test_a_snowflake_load_that_fails_midway_leaves_the_day_and_the_next_repair_loads_it(
    sandbox: SandboxServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snowflake's form of the SIGKILL scenario (test_destination_scenarios): fakesnow cannot outlive a
    killed client's open transaction, so the connection is lost with an error instead."""
    warehouse = WAREHOUSES["snowflake"](tmp_path, request)
    target = WarehouseTarget(warehouse)
    (day,) = recent_days(1, sandbox)
    export(sandbox, warehouse.block, [day], "before")
    want = [sandbox_day(sandbox, day, warehouse.exact_json)]
    (hook,) = warehouse.block.connect(1).hooks
    assert isinstance(hook, WarehouseHook)

    def lost(*args: Any) -> None:  # the day's rows are deleted and inserted, then the connection drops
        raise RuntimeError("the warehouse went away in the middle of the load")

    monkeypatch.setattr(type(hook.loader), "_record", lost)
    with pytest.raises(RuntimeError, match="went away"):
        export(sandbox, warehouse.block, [day], "broken")
    monkeypatch.undo()
    assert target.readings(day) == want, "the previous day is intact"
    assert target.recorded_run(day) == "before"

    lake = warehouse.block.connect(1)
    lake.repair("mp_master_event", day.isoformat())  # the files hold "broken": load them
    assert target.readings(day) == want and target.recorded_run(day) == "broken"


@pytest.mark.parametrize("name", list(WAREHOUSES))
def test_a_warehouse_stages_from_a_bucket(
    name: str, sandbox: SandboxServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``files`` takes any file destination: the days are committed to S3 and loaded from there, as
    Mixpanel's own pipeline stages in a bucket; nothing is written to a local files folder."""
    warehouse = WAREHOUSES[name](tmp_path, request)
    bucket = make_s3_destination(request.getfixturevalue("s3_server"))
    block = warehouse.block.model_copy(update={"files": bucket})
    days = recent_days(2, sandbox)
    export(sandbox, block, days, "from-s3")
    for day in days:
        assert WarehouseTarget(warehouse).readings(day) == [sandbox_day(sandbox, day, warehouse.exact_json)]
    lake = bucket.connect(1)
    assert {d.isoformat() for d in days} <= set(lake.partitions("mp_master_event")), "committed in the bucket"
    assert not (tmp_path / "files").exists()


def test_a_warehouse_saved_with_a_folder_path_still_loads() -> None:
    block = DuckDBWarehouse.model_validate({"database": "wh.duckdb", "files": "/srv/mixpanel"})
    assert isinstance(block.files, LocalDestination) and block.files.path == "/srv/mixpanel"


def test_a_missing_bigquery_dataset_fails_at_connect_in_one_sentence(request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("bigquery_server")
    keys = request.getfixturevalue("gcs_server")
    block = BigQueryWarehouse(
        credentials=GcpCredentials(service_account_info=keys.service_account, project=server.project),
        dataset="no_such_dataset",
        api_endpoint=server.url,
    )
    with pytest.raises(FatalError) as caught:
        block.connect(1)
    assert str(caught.value) == (
        f"BigQuery dataset {server.project}.no_such_dataset does not exist: create it (bq mk no_such_dataset) "
        "or fix the name."
    )


def test_warehouse_identifiers_are_checked() -> None:
    with pytest.raises(FatalError, match="is not a plain identifier"):
        BigQueryLoader(client=None, dataset="mixpanel`; DROP TABLE x; --")  # type: ignore[arg-type]


def test_an_unusable_duckdb_path_fails_at_connect_in_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    block = DuckDBWarehouse(database=str(blocker / "wh.duckdb"), files=str(tmp_path))
    with pytest.raises(
        FatalError, match=r"^cannot create the folder of the DuckDB database .*a-file/wh\.duckdb"
    ):
        block.connect(1)
