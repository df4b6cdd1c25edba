"""The commit protocol on every store (local, S3, GCS, Azure): replace whole, survive crashes, clean orphans."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tasks.errors import FatalError, MissingCommittedFileError
from tasks.lake.commit import Lake
from tasks.lake.committed import download_committed, local_committed, read_committed
from tasks.lake.files import RollingFiles
from tasks.lake.manifest import Manifest
from tasks.schema import EVENT_COLUMNS
from tests.kit.lake import DAY, TABLE, commit, frame, read
from tests.stores.catalog import StoreFactory


def day_files(lake: Lake) -> list[str]:
    prefix = lake.data_prefix(TABLE, DAY)
    return [i.key[len(prefix) :] for i in lake.storage.list(prefix)]


@pytest.fixture
def lake(store: StoreFactory) -> Lake:
    return store().connect(7)


def test_commit_writes_mixpanel_layout_and_a_manifest(lake: Lake, tmp_path: Path) -> None:
    manifest = commit(lake, tmp_path, "run1", 10)
    assert [f.rows for f in manifest.files] == [4, 4, 2]
    assert all(f.key.startswith(f"7/{TABLE}/2026/05/01/part-run1-") for f in manifest.files)
    assert read(lake)["distinct_id"].to_list() == [f"run1{i}" for i in range(10)]
    assert lake.partitions(TABLE) == [DAY]
    assert lake.storage.list("7/_staging/") == []


def test_recommit_replaces_the_day_whole_and_repair_keeps_rejects(lake: Lake, tmp_path: Path) -> None:
    commit(lake, tmp_path, "run1", 10)
    commit(lake, tmp_path, "run2", 3)
    assert read(lake)["distinct_id"].to_list() == ["run20", "run21", "run22"]
    assert day_files(lake) == ["part-run2-s2-00000.parquet"]
    day = lake.data_prefix(TABLE, DAY)
    lake.storage.put_bytes(f"{day}part-crashed-00000.parquet", b"an orphan of a crashed run")
    lake.storage.put_bytes(f"{day}_rejects/keep.jsonl", b"{}")
    assert lake.repair(TABLE, DAY) == 1
    assert day_files(lake) == ["_rejects/keep.jsonl", "part-run2-s2-00000.parquet"]


def test_crash_after_publishing_files_keeps_the_old_version_and_repair_cleans(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(lake, tmp_path, "run1", 2)

    def crash(self: object, key: str, data: bytes, **condition: object) -> None:
        raise KeyboardInterrupt("killed before the manifest switch")

    monkeypatch.setattr(type(lake.storage), "put_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        commit(lake, tmp_path, "run2", 5)
    monkeypatch.undo()
    assert read(lake)["distinct_id"].to_list() == ["run10", "run11"]
    assert len(day_files(lake)) == 3  # the orphans of run2 sit beside the committed file
    assert lake.repair(TABLE, DAY) == 2
    assert day_files(lake) == ["part-run1-s1-00000.parquet"]
    commit(lake, tmp_path, "run3", 1)  # nothing of the crashed commit stands in the way of the next one
    assert read(lake)["distinct_id"].to_list() == ["run30"]


def test_crash_after_the_manifest_switch_leaves_the_new_version(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(lake, tmp_path, "run1", 2)
    monkeypatch.setattr(Lake, "_remove_unlisted", lambda *a: (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        commit(lake, tmp_path, "run2", 3)
    monkeypatch.undo()
    assert read(lake).height == 3
    assert lake.repair(TABLE, DAY) == 1


def test_an_empty_day_commits_an_empty_manifest(lake: Lake, tmp_path: Path) -> None:
    commit(lake, tmp_path, "run1", 2)
    stage = lake.open_stage(TABLE, "run2")
    draft = Manifest(
        table=TABLE,
        partition=DAY,
        files=(),
        rows=0,
        fingerprint="0",
        format="parquet",
        run_id="run2",
        exported_at="x",
    )
    assert lake.commit(stage, DAY, draft).files == ()
    assert day_files(lake) == []


def test_stale_staging_is_removed(lake: Lake, tmp_path: Path) -> None:
    stage = lake.open_stage(TABLE, "crashed")
    files = RollingFiles(stage.directory(DAY, tmp_path))
    files.write(frame(1, "x"))
    stage.add(DAY, files.close())
    assert lake.remove_stale_staging(older_than_seconds=3600) == 0
    assert lake.remove_stale_staging(older_than_seconds=-1) == 1
    assert lake.storage.list("7/_staging/") == []


def test_written_columns_are_the_events_schema(lake: Lake, tmp_path: Path) -> None:
    commit(lake, tmp_path, "run1", 1)
    got = read(lake)
    assert tuple(got.columns) == EVENT_COLUMNS
    assert got.schema["time"] == pl.Datetime("us", "UTC")


def test_a_committed_file_gone_missing_is_one_error_of_the_tree_for_every_reader(
    lake: Lake, tmp_path: Path
) -> None:
    manifest = commit(lake, tmp_path, "run1", 6)
    gone = manifest.files[0].key
    lake.storage.delete([gone])
    readers = {
        "bytes": lambda: read_committed(lake.storage, gone),
        "a download": lambda: download_committed(lake.storage, gone, tmp_path / "copy.parquet"),
        "a local file": lambda: local_committed(lake.storage, gone, tmp_path / "copy.parquet"),
        "the table": lambda: read(lake),
    }
    for what, reading in readers.items():
        with pytest.raises(MissingCommittedFileError, match="is named by a manifest but missing") as caught:
            reading()
        assert isinstance(caught.value, FatalError), what
        assert lake.describe(gone) in str(caught.value), what
    # the files still there read back whole
    assert read_committed(lake.storage, manifest.files[1].key)[:4] == b"PAR1"
