"""One warehouse suite: sandbox days exported into each warehouse, then queried back with its SQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pytest
import xxhash

from blocks.destinations.base import DestinationBlock
from blocks.destinations.duckdb import DuckDBWarehouse
from flows.identity import identity
from sandbox import SandboxServer
from sandbox.data import day_lines
from tasks.duckdb_loader import DuckDBLoader
from tasks.export import ExportSettings, export_days
from tasks.manifest import fingerprint_hex
from tasks.mixpanel_client import MixpanelClient
from tasks.warehouse import Partition, WarehouseDestination
from tests.conftest import credentials_for, recent_days
from tests.test_identity_flow import expected_simplified

pytestmark = pytest.mark.usefixtures("prefect_server")


@dataclass
class Warehouse:
    """A block, and how to run a query on what it holds (rows as tuples)."""

    block: DestinationBlock
    query: Callable[[str, list[Any]], list[tuple[Any, ...]]]
    json_text: str  # SQL of properties["$insert_id"] as text, in the warehouse's JSON syntax
    day_filter: str  # SQL condition selecting the rows of day ? (a date parameter)


def duckdb_warehouse(tmp_path: Path) -> Warehouse:
    block = DuckDBWarehouse(database=str(tmp_path / "wh.duckdb"), files=str(tmp_path / "files"))

    def query(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with DuckDBLoader(Path(block.database)).connection(read_only=True) as conn:
            return conn.execute(sql, params).fetchall()

    return Warehouse(
        block, query, "properties->>'$.\"$insert_id\"'", "CAST(time AT TIME ZONE 'UTC' AS DATE) = ?"
    )


@pytest.fixture(params=["duckdb"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    return {"duckdb": duckdb_warehouse}[request.param](tmp_path)


def export(server: SandboxServer, block: DestinationBlock, days: list[date], run_id: str) -> None:
    with MixpanelClient(credentials_for(server)) as client:
        export_days(client, block.connect(1), days, ExportSettings(run_id=run_id, identity_mode="simplified"))


def day_rows(warehouse: Warehouse, day: date) -> tuple[int, str]:
    rows = warehouse.query(
        f"SELECT event_name, CAST(properties AS VARCHAR) FROM mp_master_event WHERE {warehouse.day_filter}",
        [day],
    )
    digest = xxhash.xxh3_64_intdigest
    total = sum(digest(p.encode(), seed=digest(n.encode())) for n, p in rows)
    return len(rows), fingerprint_hex(total)


def test_days_land_exactly_and_a_rerun_replaces_them(sandbox: SandboxServer, warehouse: Warehouse) -> None:
    days = recent_days(2, sandbox)
    export(sandbox, warehouse.block, days, "first")
    export(sandbox, warehouse.block, days, "second")
    for day in days:
        want = sandbox.expected(day, day)[day.isoformat()]
        assert day_rows(warehouse, day) == (want["rows"], want["fingerprint"]), "each row once, exact bytes"
    loaded = warehouse.query(
        "SELECT partition, run_id FROM _mp_manifests WHERE table_name = ?", ["mp_master_event"]
    )
    assert sorted(loaded) == [(d.isoformat(), "second") for d in days]


def test_properties_are_reachable_with_the_warehouse_json_path(
    sandbox: SandboxServer, warehouse: Warehouse
) -> None:
    (day,) = recent_days(1, sandbox)
    export(sandbox, warehouse.block, [day], "json")
    [(with_id, matching)] = warehouse.query(
        f"SELECT COUNT(insert_id), COUNT(*) FILTER (WHERE {warehouse.json_text} = insert_id) FROM mp_master_event",
        [],
    )
    served = [json.loads(line)["properties"].get("$insert_id") for line in day_lines(sandbox.cfg, day)]
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


def test_a_load_that_fails_midway_leaves_the_day_and_the_next_repair_loads_it(
    sandbox: SandboxServer, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    (day,) = recent_days(1, sandbox)
    export(sandbox, warehouse.block, [day], "before")
    want = sandbox.expected(day, day)[day.isoformat()]
    loader_type = type(warehouse.block.connect(1).loader)
    # the day's rows deleted inside the transaction, then the connection lost before the commit
    monkeypatch.setattr(loader_type, "_replace", _failing_after_delete(loader_type._replace))
    with pytest.raises(RuntimeError, match="went away"):
        export(sandbox, warehouse.block, [day], "broken")
    monkeypatch.undo()
    assert day_rows(warehouse, day) == (want["rows"], want["fingerprint"]), "the previous day is intact"
    assert warehouse.query("SELECT run_id FROM _mp_manifests", []) == [("before",)]

    destination = warehouse.block.connect(1)
    assert isinstance(destination, WarehouseDestination)
    destination.repair("mp_master_event", day.isoformat())  # the files hold "broken": load them
    assert day_rows(warehouse, day) == (want["rows"], want["fingerprint"])
    assert warehouse.query("SELECT run_id FROM _mp_manifests", []) == [("broken",)]


def _failing_after_delete(replace: Callable[..., None]) -> Callable[..., None]:
    def replace_then_fail(self: Any, conn: Any, partition: Partition, columns: str) -> None:
        replace(
            self,
            conn,
            Partition(
                partition.table, partition.name, msgspec.structs.replace(partition.manifest, files=()), [], []
            ),
            columns,
        )
        raise RuntimeError("the warehouse went away in the middle of the load")

    return replace_then_fail
