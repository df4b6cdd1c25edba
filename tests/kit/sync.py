"""Three destinations at once (a local folder, S3 on moto, DuckDB) and how to read what each holds; a
synced project with a merged user to purge, and the rows of its cluster per table.

The reconciliation and GDPR suites check every destination, so they share this kit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from blocks.destinations.base import DestinationBlock
from blocks.destinations.catalog import AnyDestination
from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.local import LocalDestination
from blocks.gdpr import MixpanelGdprCredentials
from sandbox import SandboxServer
from tasks.lake.commit import Lake
from tasks.lake.files import FileFormat, event_batches
from tasks.lake.tables import read_table
from tasks.schema import EVENT_COLUMNS, EVENTS_TABLE, MAPPINGS_TABLE, PEOPLE_TABLE
from tasks.warehouses.duckdb_loader import DuckDBLoader
from tests.conftest import credentials_for, recent_days
from tests.stores.s3 import S3Server, make_s3_destination


@dataclass
class Three:
    local: LocalDestination
    s3: DestinationBlock
    duckdb: DuckDBWarehouse

    @property
    def blocks(self) -> list[DestinationBlock]:
        return [self.local, self.s3, self.duckdb]

    def connected(self) -> list[Lake]:
        return [block.connect(1) for block in self.blocks]

    def manifests(self, days: list[date]) -> list[dict[date, bytes | None]]:
        """The raw manifest bytes of each day in each destination: byte-identical means untouched."""
        return [
            {d: dest.storage.get_bytes(dest.manifest_key(EVENTS_TABLE, d.isoformat())) for d in days}
            for dest in self.connected()
        ]

    def duckdb_rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with DuckDBLoader(Path(self.duckdb.database)).connection(read_only=True) as conn:
            return conn.execute(sql, params or []).fetchall()


def three_destinations(tmp_path: Path, s3_server: S3Server) -> Three:
    return Three(
        LocalDestination(path=str(tmp_path / "local"), create_missing=True),
        make_s3_destination(s3_server, prefix="raw"),
        DuckDBWarehouse(
            database=str(tmp_path / "wh.duckdb"),
            files=LocalDestination(path=str(tmp_path / "files"), create_missing=True),
        ),
    )


def day_frame(lake: Lake, day: date) -> pl.DataFrame:
    """The committed rows of ``day``, following its manifest; ``properties`` as the stored JSON text,
    in either file format."""
    manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None, f"no manifest for {day}"
    fmt = FileFormat(manifest.format)
    batches = [b for f in manifest.files for b in event_batches(lake.storage.get_bytes(f.key) or b"", fmt)]
    return pl.concat(batches) if batches else pl.DataFrame(schema=dict.fromkeys(EVENT_COLUMNS, pl.String))


def edges_frame(lake: Lake, day: date) -> pl.DataFrame:
    manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None
    frames = [
        pq.read_table(io.BytesIO(lake.storage.get_bytes(f.key) or b"")) for f in manifest.identity_edges
    ]
    return pl.concat([pl.DataFrame(pl.from_arrow(t)) for t in frames]) if frames else pl.DataFrame()


def whole_table(lake: Lake, table: str) -> pl.DataFrame:
    assert table in (PEOPLE_TABLE, MAPPINGS_TABLE)
    found = read_table(lake, table)
    return found if found is not None else pl.DataFrame()


def day_range_utc(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def tokens(sandbox: SandboxServer) -> MixpanelGdprCredentials:
    return MixpanelGdprCredentials(
        project_token=sandbox.cfg.project_token, oauth_token=sandbox.cfg.gdpr_oauth_token
    )


def merged_user(lake: Lake) -> tuple[str, set[str]]:
    """A user with devices merged into it, and every id of its cluster."""
    mappings = whole_table(lake, MAPPINGS_TABLE)
    sizes = (
        mappings.group_by("resolved_distinct_id")
        .len()
        .filter(pl.col("len") >= 3)
        .sort("resolved_distinct_id")
    )
    user = sizes["resolved_distinct_id"][0]
    return user, set(mappings.filter(pl.col("resolved_distinct_id") == user)["distinct_id"]) | {user}


def synced_twice(server: SandboxServer, block: AnyDestination) -> tuple[str, set[str]]:
    """Two days of events, people and identity written twice (older versions of every table to travel
    to), then a merged user and its identity cluster: what the GDPR scenarios purge."""
    from flows.events import events
    from flows.identity import identity
    from flows.people import people

    credentials = credentials_for(server)
    days = recent_days(2, server)
    for _ in range(2):
        events(credentials, block, from_date=days[0], to_date=days[-1])
        people(credentials, block)
        identity(credentials, block)
    return merged_user(block.connect(1))


def rows_of_cluster(cluster: set[str]) -> list[tuple[str, pl.Expr]]:
    """Per table, the rows that belong to the identity cluster."""
    from tasks.pipeline.exclude import event_rows_of
    from tasks.schema import EVENTS_TABLE, MAPPINGS_TABLE, PEOPLE_TABLE

    ids = list(cluster)
    return [
        (EVENTS_TABLE, event_rows_of(cluster)),
        (PEOPLE_TABLE, pl.col("distinct_id").is_in(ids)),
        (MAPPINGS_TABLE, pl.col("distinct_id").is_in(ids) | pl.col("resolved_distinct_id").is_in(ids)),
    ]
