"""Whole-table replacement (people, identity mappings) and reading the day-level identity edges.

Both tables are small beside the events and are replaced whole on every run, like Mixpanel does:
one partition named ``all`` per table, committed through the same protocol as an event day, so a
reader sees the old table or the new one, never a mix.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import xxhash

from tasks.lake.commit import Lake
from tasks.lake.committed import read_committed
from tasks.lake.files import RollingFiles
from tasks.lake.manifest import Manifest, PurgeNote, fingerprint_hex
from tasks.schema import EVENTS_TABLE, WHOLE_PARTITION

WHOLE = WHOLE_PARTITION


def keyed_fingerprint(keys: list[str], values: list[str]) -> int:
    """Sum of ``xxh3_64(value, seed=xxh3_64(key))``: the events fingerprint with the row key as seed."""
    digest = xxhash.xxh3_64_intdigest
    return sum(digest(v.encode(), seed=digest(k.encode())) for k, v in zip(keys, values, strict=True))


def replace_table(
    lake: Lake,
    table: str,
    schema: pa.Schema,
    frames: Iterable[pl.DataFrame],
    run_id: str,
    value_column: str,
    flow_run_id: str | None = None,
    purge: PurgeNote | None = None,
) -> Manifest:
    """Stage every frame, then swap the whole table in one commit; on any error nothing changes."""
    stage = lake.open_stage(table, run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="mp-table-") as scratch:
            files = RollingFiles(stage.directory(WHOLE, Path(scratch)), schema=schema)
            rows = total = 0
            for frame in frames:
                files.write(frame)
                rows += frame.height
                total += keyed_fingerprint(frame["distinct_id"].to_list(), frame[value_column].to_list())
            stage.add(WHOLE, files.close())
            manifest = Manifest(
                table=table,
                partition=WHOLE,
                files=(),
                rows=rows,
                fingerprint=fingerprint_hex(total),
                format="parquet",
                run_id=run_id,
                flow_run_id=flow_run_id,
                exported_at=datetime.now(tz=UTC).isoformat(timespec="seconds"),
                purge=purge,
            )
            final = lake.commit(stage, WHOLE, manifest)
    except BaseException:
        stage.abort()
        raise
    stage.abort()  # drops the emptied staging folder
    return final


def read_table(lake: Lake, table: str) -> pl.DataFrame | None:
    manifest = lake.manifest(table, WHOLE)
    if manifest is None:
        return None
    return read_parquet(lake, [f.key for f in manifest.files])


def read_parquet(lake: Lake, keys: list[str]) -> pl.DataFrame:
    frames = []
    for key in keys:
        frames.append(pl.read_parquet(io.BytesIO(read_committed(lake.storage, key))))
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def committed_edges(lake: Lake) -> tuple[pl.DataFrame, int]:
    """All identity edges of the committed event days, and how many days they came from."""
    keys: list[str] = []
    days = lake.partitions(EVENTS_TABLE)
    for day in days:
        manifest = lake.manifest(EVENTS_TABLE, day)
        if manifest is not None:
            keys.extend(f.key for f in manifest.identity_edges)
    return read_parquet(lake, keys), len(days)
