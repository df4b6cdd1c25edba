"""`make demo`: the events flow end to end on the embedded default, with nothing to configure.

Starts the sandbox Mixpanel on loopback, exports the last 7 days into ./data, checks every day
against what the sandbox served, prints where the files are and runs an example query over them.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl

from blocks.destinations.local import LocalDestination
from blocks.mixpanel import MixpanelCredentials
from sandbox import ProjectConfig, SandboxServer
from tasks.export import EVENTS_TABLE
from tasks.objectstore import ObjectStoreDestination
from tasks.tables import MAPPINGS_TABLE, PEOPLE_TABLE, read_table

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", "data"))
DAYS = 7
EVENTS_PER_DAY = 5000


def main() -> int:
    server = SandboxServer(ProjectConfig(events_per_day=EVENTS_PER_DAY)).start()
    try:
        print(f"sandbox Mixpanel listening on {server.url}")
        return run_demo(server)
    finally:
        server.stop()
        print("sandbox stopped")


def run_demo(server: SandboxServer) -> int:
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
    last = credentials.yesterday()
    first = last - timedelta(days=DAYS - 1)
    target = LocalDestination(path=str(DATA_DIR))
    events(credentials, target, from_date=first, to_date=last)
    people(credentials, target)
    identity(credentials, target)
    destination = target.connect(cfg.project_id)
    days = [first + timedelta(days=i) for i in range(DAYS)]
    ok = report(destination, server, days)
    example_query(destination, days)
    unique_users(destination, days)
    return 0 if ok else 1


def report(destination: ObjectStoreDestination, server: SandboxServer, days: list) -> bool:
    expected = server.expected(days[0], days[-1])
    print(f"\n{'day':<12}{'rows':>8}  {'fingerprint':<18}{'matches sandbox':<17}files")
    ok = True
    for day in days:
        manifest = destination.manifest(EVENTS_TABLE, day.isoformat())
        assert manifest is not None
        want = expected[day.isoformat()]
        same = (manifest.rows, manifest.fingerprint) == (want["rows"], want["fingerprint"])
        ok &= same
        where = destination.describe(destination.data_prefix(EVENTS_TABLE, day.isoformat()))
        print(
            f"{day!s:<12}{manifest.rows:>8}  {manifest.fingerprint:<18}{'yes' if same else 'NO':<17}{where}"
        )
    return ok


def example_query(destination: ObjectStoreDestination, days: list) -> None:
    """Follow the manifests (the committed truth) rather than globbing folders."""
    files = [
        destination.describe(f.key)
        for day in days
        if (m := destination.manifest(EVENTS_TABLE, day.isoformat()))
        for f in m.files
    ]
    events = pl.scan_parquet(files)
    query = """
        SELECT event_name,
               COUNT(*) AS events,
               COUNT(DISTINCT distinct_id) AS distinct_ids,
               COUNT(DISTINCT insert_id) AS insert_ids
        FROM events
        GROUP BY event_name
        ORDER BY events DESC
        LIMIT 8
    """
    print("\nexample query (polars SQL over the files the manifests name):")
    print(query.strip())
    with pl.Config(tbl_rows=10, tbl_hide_dataframe_shape=True):
        print(pl.SQLContext(events=events).execute(query).collect())
    browsers = (
        events.select(pl.col("properties").str.json_path_match('$["$browser"]').alias("browser"))
        .group_by("browser")
        .len("events")
        .sort("events", descending=True)
        .head(5)
    )
    print("\na property straight from the properties JSON (polars):")
    print("""events.select(pl.col("properties").str.json_path_match('$["$browser"]'))...""")
    with pl.Config(tbl_hide_dataframe_shape=True):
        print(browsers.collect())
    print(
        "\nthe same in DuckDB: SELECT event_name, COUNT(*) FROM "
        f"read_parquet('{destination.describe(str(1))}/mp_master_event/*/*/*/*.parquet') GROUP BY 1"
    )


def unique_users(destination: ObjectStoreDestination, days: list) -> None:
    """Why the mappings table matters: the same person counted once, not once per device."""
    files = [
        destination.describe(f.key)
        for d in days
        if (m := destination.manifest(EVENTS_TABLE, d.isoformat()))
        for f in m.files
    ]
    mappings = read_table(destination, MAPPINGS_TABLE)
    profiles = read_table(destination, PEOPLE_TABLE)
    query = """
        SELECT CAST(e.time AS DATE) AS day,
               COUNT(DISTINCT e.distinct_id) AS naive_users,
               COUNT(DISTINCT COALESCE(m.resolved_distinct_id, e.distinct_id)) AS users
        FROM events e LEFT JOIN mappings m ON e.distinct_id = m.distinct_id
        WHERE e.distinct_id <> ''
        GROUP BY 1 ORDER BY 1
    """
    context = pl.SQLContext(events=pl.scan_parquet(files), mappings=mappings.lazy())
    print(
        f"\n{profiles.height if profiles is not None else 0} profiles in mp_people_data; "
        f"{mappings.height} ids in mp_identity_mappings_data"
    )
    print("unique users per day, naive (raw distinct_id) beside resolved through the mappings:")
    print(query.strip())
    with pl.Config(tbl_rows=10, tbl_hide_dataframe_shape=True):
        print(context.execute(query).collect())


if __name__ == "__main__":
    sys.exit(main())
