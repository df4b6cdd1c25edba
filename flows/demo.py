"""`make demo`: the pipelines end to end on the embedded warehouse, with nothing to configure.

Starts the sandbox Mixpanel on loopback, exports the last 7 days, the profiles and the identity
mappings into DuckDB (data/demo/mixpanel.duckdb, loaded from the Parquet files under data/demo), checks
every day against what the sandbox served, and runs example queries in DuckDB.

`make demo FORMAT=delta` (or `FORMAT=iceberg`) writes Delta Lake tables under data/demo/<project>/delta/
(Iceberg: data/demo/<project>/iceberg/ with its SQLite catalog) instead, and queries them with polars.

The demo's folder is its own: the deployments (`make deploy`) write ./data from another sandbox with
other data, and a reconciliation run there would "repair" every demo day it found.
"""

from __future__ import annotations

import os
import sys
import textwrap
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from blocks.destinations.base import DestinationBlock
from blocks.destinations.catalog import AnyDestination
from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.local import LocalDestination
from blocks.mixpanel import MixpanelCredentials
from tasks.lake.commit import Lake
from tasks.schema import EVENTS_TABLE
from tasks.warehouses.duckdb_loader import DuckDBLoader
from tasks.warehouses.tableformat import TableFormatHook, format_hook

if TYPE_CHECKING:
    from sandbox import SandboxServer

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", "data/demo"))
FORMATS = ("duckdb", "delta", "iceberg")
DAYS = 7
EVENTS_PER_DAY = 5000


def main() -> int:
    fmt = os.environ.get("FORMAT") or "duckdb"
    if fmt not in FORMATS:
        print(f"FORMAT={fmt} is not one of {', '.join(FORMATS)}")
        return 2
    try:  # the sandbox is part of a checkout, not of the installed package (which carries flows, blocks, tasks)
        from sandbox import ProjectConfig, SandboxServer
    except ModuleNotFoundError:
        print("the demo runs from a checkout of the repository: `make demo` there", file=sys.stderr)
        return 2
    server = SandboxServer(ProjectConfig(events_per_day=EVENTS_PER_DAY)).start()
    try:
        print(f"sandbox Mixpanel listening on {server.url}; the demo writes under {DATA_DIR}/")
        return run_demo(server, fmt)
    finally:
        server.stop()
        print("sandbox stopped")


def run_demo(server: SandboxServer, fmt: str = "duckdb") -> int:
    from flows.events import events  # imported late: Prefect prints its banner on import
    from flows.identity import identity
    from flows.people import people

    cfg = server.cfg
    credentials = MixpanelCredentials(
        project_id=cfg.project_id,
        service_account_username=cfg.username,
        service_account_secret=cfg.secret,
        api_base_url=server.url,
    )
    last = credentials.calendar().yesterday()
    first = last - timedelta(days=DAYS - 1)
    # the demo owns its folder; the blocks themselves refuse a missing one (an unmounted volume)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    duckdb = DuckDBWarehouse(database=str(DATA_DIR / "mixpanel.duckdb"), files=str(DATA_DIR))
    target: Any = duckdb if fmt == "duckdb" else format_block(fmt, LocalDestination(path=str(DATA_DIR)))
    events(credentials, target, from_date=first, to_date=last)
    people(credentials, target)
    identity(credentials, target)
    lake = target.connect(cfg.project_id)
    days = [first + timedelta(days=i) for i in range(DAYS)]
    ok = report(lake, server, days)
    ok &= sync_status(credentials, target)
    hook = format_hook(lake)
    if hook is not None:
        format_queries(hook, fmt)
    else:
        example_queries(Path(duckdb.database))
    return 0 if ok else 1


def report(lake: Lake, server: SandboxServer, days: list[date]) -> bool:
    expected = server.expected(days[0], days[-1])
    print(f"\n{'day':<12}{'rows':>8}  {'fingerprint':<18}{'matches sandbox':<17}files")
    ok = True
    for day in days:
        manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
        assert manifest is not None
        want = expected[day.isoformat()]
        same = (manifest.rows, manifest.fingerprint) == (want["rows"], want["fingerprint"])
        ok &= same
        where = lake.describe(lake.data_prefix(EVENTS_TABLE, day.isoformat()))
        print(
            f"{day!s:<12}{manifest.rows:>8}  {manifest.fingerprint:<18}{'yes' if same else 'NO':<17}{where}"
        )
    return ok


def sync_status(credentials: MixpanelCredentials, target: AnyDestination) -> bool:
    """The status flow over the demo's week: the rows the UI's chart, `make status` and (DuckDB) the view
    mp_sync_status show."""
    from flows.status import status

    rows = status(credentials, target, days=DAYS)
    healthy = sum(row["state"] in ("in_sync", "purged") for row in rows)
    print(
        f"\nsync status: {healthy} of {len(rows)} day(s) in sync with Mixpanel's counts; the same table in the "
        f"terminal: make status DATA_DIR={DATA_DIR} OFFLINE=1"
    )
    return healthy == len(rows)


QUERIES = {
    "events per day": """
        SELECT CAST(time AS DATE) AS day, COUNT(*) AS events, COUNT(DISTINCT insert_id) AS insert_ids
        FROM mp_master_event GROUP BY 1 ORDER BY 1""",
    "a property straight from the properties JSON": """
        SELECT properties->>'$."$browser"' AS browser, COUNT(*) AS events
        FROM mp_master_event GROUP BY 1 ORDER BY 2 DESC LIMIT 5""",
    "unique users per day, naive (raw distinct_id) beside resolved through the identity mappings": """
        SELECT CAST(time AS DATE) AS day,
               COUNT(DISTINCT distinct_id) AS naive_users,
               COUNT(DISTINCT resolved_distinct_id) AS users
        FROM mp_master_event_resolved
        WHERE distinct_id <> ''
        GROUP BY 1 ORDER BY 1""",
    "each day's sync status (the view mp_sync_status)": """
        SELECT day, state, rows_held, mixpanel_rows, difference FROM mp_sync_status ORDER BY day""",
    "profiles and mapped ids": """
        SELECT (SELECT COUNT(*) FROM mp_people_data) AS profiles,
               (SELECT COUNT(*) FROM mp_identity_mappings_data) AS mapped_ids""",
}


def example_queries(database: Path) -> None:
    print(
        f"\nexample queries, in DuckDB ({database}; from Python: "
        f"duckdb.connect({str(database)!r}, read_only=True).sql(...)):"
    )
    with DuckDBLoader(database).connection(read_only=True) as conn, pl.Config(tbl_hide_dataframe_shape=True):
        conn.execute("SET TimeZone = 'UTC'")
        for title, sql in QUERIES.items():
            print(f"\n-- {title}\n{textwrap.dedent(sql).strip()};")
            print(conn.sql(sql).pl())


def format_block(fmt: str, files: LocalDestination) -> DestinationBlock:
    """The Delta or Iceberg block on ``files`` (imported here: each needs its extra installed)."""
    if fmt == "delta":
        from blocks.destinations.delta import DeltaLakeDestination

        return DeltaLakeDestination(files=files)
    from blocks.destinations.iceberg import IcebergDestination

    return IcebergDestination(files=files)


def format_queries(hook: TableFormatHook, fmt: str) -> None:
    """The same questions through polars' own Delta / Iceberg readers (DuckDB needs an extension for them)."""
    tables = {name: _scan(hook, fmt, name) for name in ("mp_master_event", "mp_identity_mappings_data")}
    events = tables["mp_master_event"]
    mappings = tables["mp_identity_mappings_data"]
    print(f"\nexample queries, with polars on the {hook.table_format.name} tables:")
    with pl.Config(tbl_hide_dataframe_shape=True):
        print("\n-- events per day (the partition column)")
        print(events.group_by("day").agg(pl.len().alias("events")).sort("day").collect())
        print("\n-- a property straight from the properties JSON")
        browser = pl.col("properties").str.json_path_match(r"$.$browser").alias("browser")
        print(events.group_by(browser).len().sort("len", descending=True).head(5).collect())
        print("\n-- unique users per day, resolved through the identity mappings")
        users = events.filter(pl.col("distinct_id") != "").join(mappings, on="distinct_id", how="left")
        resolved = pl.coalesce("resolved_distinct_id", "distinct_id")
        print(users.group_by("day").agg(resolved.n_unique().alias("users")).sort("day").collect())


def _scan(hook: TableFormatHook, fmt: str, table: str) -> pl.LazyFrame:
    os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")  # polars' own planner is a separate package
    location = hook.table_format.location  # type: ignore[attr-defined]
    if fmt == "delta":
        return pl.scan_delta(location.table(table))
    return pl.scan_iceberg(hook.table_format.catalog.load_table(("mixpanel", table)))  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
