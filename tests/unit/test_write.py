"""Rolling files and the shared row-group buffer."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from tasks.lake.files import PartitionBuffer, RollingFiles
from tests.kit.lake import frame


def test_the_buffer_bounds_memory_and_keeps_row_groups_large(tmp_path: Path) -> None:
    writers = {1: RollingFiles(tmp_path / "a"), 2: RollingFiles(tmp_path / "b")}
    one_frame = int(frame(100, "x").estimated_size())  # polars types it int | float; bytes are whole
    buffer = PartitionBuffer(writers, budget_bytes=one_frame * 4)
    for i in range(12):  # interleaved days, as a multi-day response delivers them
        buffer.add(1 + i % 2, frame(100, f"{i}-"))
    buffer.flush_all()
    for key, folder in ((1, "a"), (2, "b")):
        (written,) = writers[key].close()
        assert written.rows == 600
        meta = pq.ParquetFile(tmp_path / folder / written.path.name).metadata
        assert meta.num_rows == 600 and meta.num_row_groups < 6  # fewer, larger groups than frames
    assert pl.read_parquet(tmp_path / "a").height == 600


def test_files_roll_over_by_rows(tmp_path: Path) -> None:
    files = RollingFiles(tmp_path, max_file_rows=150)
    for _ in range(4):
        files.write(frame(100, "r"))
    assert [f.rows for f in files.close()] == [200, 200]


def test_each_finished_file_is_handed_over_while_the_next_is_written(tmp_path: Path) -> None:
    handed: list[tuple[str, int, int]] = []
    files = RollingFiles(
        tmp_path, max_file_rows=150, on_close=lambda w: handed.append((w.path.name, w.rows, len(handed)))
    )
    for i in range(4):
        files.write(frame(100, "r"))
        if i == 1:
            assert handed == [("part-00000.parquet", 200, 0)], "the first file is out before the third frame"
    files.close()
    assert [h[:2] for h in handed] == [("part-00000.parquet", 200), ("part-00001.parquet", 200)]


def test_row_groups_keep_statistics_of_every_column_but_the_json_text(tmp_path: Path) -> None:
    files = RollingFiles(tmp_path)
    files.write(frame(100, "s"))
    (written,) = files.close()
    group = pq.ParquetFile(written.path).metadata.row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).statistics for i in range(group.num_columns)}
    assert stats.pop("properties") is None
    assert all(s is not None for s in stats.values()), stats  # all-null columns have counts, no bounds
    time_stats = stats["time"]
    assert time_stats is not None
    assert time_stats.has_min_max
