"""Rows staged and committed straight through the commit protocol, for one fixed day of the events
table (no Mixpanel export): what the store contract and the writer tests build on."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tasks.lake.commit import Lake, Stage
from tasks.lake.files import RollingFiles
from tasks.lake.manifest import Manifest
from tasks.lake.tables import read_parquet, read_table

TABLE = "mp_master_event"
DAY = "2026-05-01"


def frame(n: int, tag: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "device_id": [None] * n,
            "distinct_id": [f"{tag}{i}" for i in range(n)],
            "event_name": ["e"] * n,
            "insert_id": [str(i) for i in range(n)],
            "properties": ['{"time":1}'] * n,
            "time": pl.Series([0] * n).cast(pl.Datetime("us", "UTC")),
            "user_id": [None] * n,
        }
    )


def stage_rows(lake: Lake, scratch: Path, run: str, n: int, frame_rows: int = 2) -> tuple[Stage, Manifest]:
    """A stage of ``n`` rows of run ``run`` in files of at most 4 rows, and its draft manifest."""
    stage = lake.open_stage(TABLE, run)
    files = RollingFiles(stage.directory(DAY, scratch / run), max_file_rows=4)
    rows = frame(n, run)
    for start in range(0, n, frame_rows):  # frames of 2 rows: a file rolls over once it holds 4
        files.write(rows.slice(start, frame_rows))
    stage.add(DAY, files.close())
    draft = Manifest(
        table=TABLE,
        partition=DAY,
        files=(),
        rows=n,
        fingerprint="0",
        format="parquet",
        run_id=run,
        exported_at="x",
    )
    return stage, draft


def commit(lake: Lake, scratch: Path, run: str, n: int) -> Manifest:
    stage, draft = stage_rows(lake, scratch, run, n)
    return lake.commit(stage, DAY, draft)


def read(lake: Lake) -> pl.DataFrame:
    manifest = lake.manifest(TABLE, DAY)
    assert manifest is not None
    return read_parquet(lake, [f.key for f in manifest.files])


def committed(lake: Lake, table: str, partition: str) -> Manifest:
    """The partition's manifest, which the test has just committed (a missing one fails the test here)."""
    manifest = lake.manifest(table, partition)
    assert manifest is not None, f"{table} {partition} has no committed manifest"
    return manifest


def whole_table(lake: Lake, table: str) -> pl.DataFrame:
    """A whole (unpartitioned) table the test has just committed (a missing one fails the test here)."""
    frame = read_table(lake, table)
    assert frame is not None, f"{table} has no committed manifest"
    return frame
