"""One contract for the store layer and the commit protocol, on every store (local, S3, GCS, Azure).

The store: put/get/list/copy/move/delete, create-if-absent, a stale compare-and-swap refused, keys
that would leave the root refused. The commit: two runs of the same day racing (exactly one version
committed, the loser's files gone, its retry completes the day), and every containment case leaving
each file outside the table byte-identical.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgspec
import pytest

from blocks.destinations.base import BucketDestination
from blocks.destinations.local import LocalDestination
from tasks.errors import (
    ConcurrentCommitError,
    CorruptManifestError,
    FatalError,
    OutsideDestinationError,
    PreconditionFailedError,
)
from tasks.lake.commit import Lake, Stage
from tasks.lake.manifest import Manifest, ManifestFile
from tasks.lake.store import Store
from tests.kit.lake import DAY, TABLE, read, stage_rows
from tests.stores.catalog import StoreFactory

OUTSIDE = {"outside.txt": b"another team's object", "raw-other/k": b"a sibling folder"}


def outer(block: BucketDestination) -> Store:
    """A store on the same location one level up: where the files outside the destination live."""
    if isinstance(block, LocalDestination):
        return LocalDestination(path=str(Path(block.path).parent), create_missing=True).store()
    return block.model_copy(update={"prefix": ""}).store()


@pytest.fixture
def block(store: StoreFactory) -> BucketDestination:
    made = store()
    if isinstance(made, LocalDestination):  # the local root one level down, like the buckets' "raw"
        made = LocalDestination(path=str(Path(made.path) / "raw"), create_missing=True)
    assert isinstance(made, BucketDestination)
    return made


@pytest.fixture
def outside(block: BucketDestination) -> Store:
    up = outer(block)
    for key, data in OUTSIDE.items():
        up.put_bytes(key, data)
    return up


def assert_outside_untouched(up: Store) -> None:
    for key, data in OUTSIDE.items():
        assert up.get_bytes(key) == data, f"{key} outside the destination was changed"


# the store ------------------------------------------------------------------------------------------


def test_put_get_list_copy_move_delete(block: BucketDestination, outside: Store, tmp_path: Path) -> None:
    s = block.connect(7).storage
    assert s.get("a/missing") is None
    first = s.put_bytes("a/b/one", b"1")
    s.put_bytes("a/b/one", b"one")
    got = s.get("a/b/one")
    assert got is not None and got.data == b"one" and got.version != first
    s.put_bytes("a/bc", b"not in a/b")
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(1000))
    s.upload(local, "a/b/two")
    s.copy("a/b/two", "a/c/copied")
    s.move("a/b/one", "a/c/moved")
    assert [(i.key, i.size) for i in s.list("a/b")] == [("a/b/two", 1000)]
    assert [i.key for i in s.list("a/")] == ["a/b/two", "a/bc", "a/c/copied", "a/c/moved"]
    assert s.get_bytes("a/c/copied") == local.read_bytes()
    s.delete(["a/b/two", "a/c/moved", "never/existed"])
    assert [i.key for i in s.list("a")] == ["a/bc", "a/c/copied"]
    assert s.list("_probe/") == [], "connect leaves no probe behind"
    assert_outside_untouched(outside)


def test_download_copies_an_object_to_a_local_file(block: BucketDestination, tmp_path: Path) -> None:
    s = block.connect(7).storage
    body = os.urandom(3 << 20)  # several chunks of a streamed download
    s.put_bytes("d/big.bin", body)
    s.download("d/big.bin", tmp_path / "got.bin")
    assert (tmp_path / "got.bin").read_bytes() == body
    with pytest.raises(FatalError, match="does not exist"):
        s.download("d/missing.bin", tmp_path / "missing.bin")


def test_create_if_absent_and_a_stale_compare_and_swap_are_refused(block: BucketDestination) -> None:
    s = block.store()
    v1 = s.put_bytes("m.json", b"v1", create=True)
    with pytest.raises(PreconditionFailedError):
        s.put_bytes("m.json", b"second create", create=True)
    read_back = s.get("m.json")
    assert read_back is not None and read_back.data == b"v1"
    v2 = s.put_bytes("m.json", b"v2", if_version=read_back.version)
    assert v2 != v1
    with pytest.raises(PreconditionFailedError):
        s.put_bytes("m.json", b"stale", if_version=read_back.version)
    assert s.get_bytes("m.json") == b"v2"


@pytest.mark.parametrize("key", ["../outside.txt", "/outside.txt", "a/../../outside.txt", "a//b", "./a"])
def test_keys_that_leave_the_root_are_refused(block: BucketDestination, outside: Store, key: str) -> None:
    s = block.store()
    for attempt in (
        lambda: s.put_bytes(key, b"x"),
        lambda: s.get(key),
        lambda: s.delete([key]),
        lambda: s.copy("a", key),
        lambda: s.list(key),
    ):
        with pytest.raises(OutsideDestinationError):
            attempt()
    assert_outside_untouched(outside)


# the commit protocol -----------------------------------------------------------------------------------


def all_keys(lake: Lake) -> list[str]:
    return [i.key for i in lake.storage.list("7/")]


@pytest.mark.parametrize("first_version", [True, False])
def test_two_runs_racing_commit_exactly_one_version_and_the_loser_retries(
    block: BucketDestination, tmp_path: Path, first_version: bool
) -> None:
    lake = block.connect(7)
    if not first_version:
        stage, draft = stage_rows(lake, tmp_path, "before", 2)
        lake.commit(stage, DAY, draft)
        stage.abort()
    a, b = stage_rows(lake, tmp_path, "runa", 5), stage_rows(lake, tmp_path, "runb", 3)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str | ConcurrentCommitError] = {}

    def race(name: str, stage: Stage, draft: Manifest) -> None:
        barrier.wait()
        try:
            outcomes[name] = lake.commit(stage, DAY, draft).run_id
        except ConcurrentCommitError as exc:
            outcomes[name] = exc
        stage.abort()

    threads = [threading.Thread(target=race, args=(n, *s)) for n, s in (("runa", a), ("runb", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, o in outcomes.items() if isinstance(o, str)]
    (loser,) = [n for n, o in outcomes.items() if isinstance(o, ConcurrentCommitError)]
    assert len(winners) == 1, outcomes
    manifest = lake.manifest(TABLE, DAY)
    assert manifest is not None and manifest.run_id == winners[0]
    assert not [k for k in all_keys(lake) if loser in k], "nothing of the loser is left"
    # the loser's retry starts from the new version and completes the day
    stage, draft = stage_rows(lake, tmp_path / "retry", loser, 4)
    final = lake.commit(stage, DAY, draft)
    stage.abort()
    assert read(lake)["distinct_id"].to_list() == [f"{loser}{i}" for i in range(4)]
    data = [k for k in all_keys(lake) if k.startswith("7/mp_master_event/")]
    assert sorted(data) == sorted(f.key for f in final.files), "only the committed version's files remain"
    assert not [k for k in all_keys(lake) if "_staging" in k]


def test_a_stage_that_started_before_another_commit_loses_even_if_it_commits_later(
    block: BucketDestination, tmp_path: Path
) -> None:
    lake = block.connect(7)
    slow = stage_rows(lake, tmp_path, "slow", 2)  # read the (absent) manifest first
    fast = stage_rows(lake, tmp_path, "fast", 3)
    lake.commit(*fast[:1], DAY, fast[1])
    with pytest.raises(ConcurrentCommitError, match="committed by run fast"):
        lake.commit(slow[0], DAY, slow[1])
    slow[0].abort()
    fast[0].abort()
    assert read(lake).height == 3
    assert not [k for k in all_keys(lake) if "slow" in k]


def test_repair_fences_a_run_still_working_and_removes_its_files(
    block: BucketDestination, tmp_path: Path
) -> None:
    lake = block.connect(7)
    stage, draft = stage_rows(lake, tmp_path, "first", 2)
    lake.commit(stage, DAY, draft)
    working = stage_rows(lake, tmp_path, "working", 3)
    files = lake._publish(working[0].files[DAY], lake.data_prefix(TABLE, DAY), "working-s2")
    assert lake.repair(TABLE, DAY) == len(files)
    with pytest.raises(ConcurrentCommitError):  # its base is no longer the manifest's version
        lake.commit(working[0], DAY, working[1])
    assert read(lake).height == 2


# containment -----------------------------------------------------------------------------------------------


def corrupt(lake: Lake, key: str) -> None:
    manifest = lake.manifest(TABLE, DAY)
    assert manifest is not None
    bad = msgspec.structs.replace(manifest, files=(ManifestFile(key, 1, 1),))
    lake.storage.put_bytes(lake.manifest_key(TABLE, DAY), bad.encode())


@pytest.mark.parametrize(
    "key",
    ["/etc/passwd", "../outside.txt", "7/mp_master_event/2026/05/01/../../../../../outside.txt", "outside.txt",
     "7/mp_master_event/2026/05/02/part-x.parquet", "7/mp_people_data/part-x.parquet"],
)  # fmt: skip
def test_a_manifest_naming_a_key_outside_its_partition_is_corrupt_and_nothing_is_deleted(
    block: BucketDestination, outside: Store, tmp_path: Path, key: str
) -> None:
    lake = block.connect(7)
    stage, draft = stage_rows(lake, tmp_path, "run1", 2)
    lake.commit(stage, DAY, draft)
    lake.storage.put_bytes("7/mp_master_event/2026/05/02/part-x.parquet", b"another day")
    lake.storage.put_bytes("7/mp_people_data/part-x.parquet", b"another table")
    corrupt(lake, key)
    before = {i.key: lake.storage.get_bytes(i.key) for i in lake.storage.list("7/")}
    with pytest.raises(CorruptManifestError, match="outside its partition"):
        lake.manifest(TABLE, DAY)
    with pytest.raises(CorruptManifestError):
        lake.repair(TABLE, DAY)
    with pytest.raises(CorruptManifestError):  # a run reads its base first: it writes nothing
        stage_rows(lake, tmp_path / "2", "run2", 1)
    assert {i.key: lake.storage.get_bytes(i.key) for i in lake.storage.list("7/")} == before
    assert_outside_untouched(outside)


def test_partition_names_must_be_real_dates(block: BucketDestination, outside: Store) -> None:
    lake = block.connect(7)
    lake.storage.put_bytes("7/_state/manifests/mp_master_event/....-..-...json", b"{}")
    lake.storage.put_bytes("7/_state/manifests/mp_master_event/2026-02-30.json", b"{}")
    assert lake.partitions(TABLE) == []
    for name in ("....-..-..", "2026-02-30", "../..", "2026/05/01"):
        with pytest.raises(OutsideDestinationError):
            lake.repair(TABLE, name)
    assert_outside_untouched(outside)


def test_only_days_are_partitions_of_the_events_table_and_only_all_of_a_whole_table(
    block: BucketDestination, outside: Store, tmp_path: Path
) -> None:
    lake = block.connect(7)
    stage, draft = stage_rows(lake, tmp_path, "run1", 2)
    committed = lake.commit(stage, DAY, draft)
    # a hand-made manifest named like a whole table's, among the days, and a day among a whole table's
    fake = msgspec.structs.replace(committed, partition="all", files=())
    lake.storage.put_bytes("7/_state/manifests/mp_master_event/all.json", fake.encode())
    lake.storage.put_bytes(f"7/_state/manifests/mp_people_data/{DAY}.json", fake.encode())
    lake.storage.put_bytes("7/mp_master_event/part-x-s1-00000.parquet", b"lies directly in the table folder")
    lake.storage.put_bytes("7/mp_people_data/part-x-s1-00000.parquet", b"the people table")
    before = {i.key: lake.storage.get_bytes(i.key) for i in lake.storage.list("7/")}
    assert lake.partitions(TABLE) == [DAY]
    assert lake.partitions("mp_people_data") == []
    with pytest.raises(OutsideDestinationError, match="'all' is not a partition of mp_master_event") as info:
        lake.repair(TABLE, "all")
    assert str(info.value).count(".") == 1 and "\n" not in str(info.value)
    with pytest.raises(OutsideDestinationError, match="is not a partition of mp_people_data"):
        lake.repair("mp_people_data", DAY)
    assert {i.key: lake.storage.get_bytes(i.key) for i in lake.storage.list("7/")} == before
    assert_outside_untouched(outside)


def test_local_deletions_and_listings_never_follow_a_symbolic_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "part-x-00000.parquet").write_bytes(b"not ours")
    lake = LocalDestination(path=str(tmp_path / "dest"), create_missing=True).connect(7)
    stage, draft = stage_rows(lake, tmp_path, "run1", 2)
    lake.commit(stage, DAY, draft)
    day = tmp_path / "dest" / "7" / "mp_master_event" / "2026" / "05" / "02"
    day.parent.mkdir(parents=True, exist_ok=True)
    day.symlink_to(elsewhere, target_is_directory=True)  # a day folder that is a link out
    (tmp_path / "dest" / "7" / "mp_master_event" / "2026" / "05" / "01" / "link.parquet").symlink_to(
        elsewhere / "part-x-00000.parquet"
    )
    assert lake.repair(TABLE, "2026-05-02") == 0
    assert [i.key for i in lake.storage.list("7/mp_master_event/2026/05/02")] == []
    assert "link.parquet" not in {i.key.rsplit("/", 1)[1] for i in lake.storage.list("7/")}
    with pytest.raises(OutsideDestinationError, match="symbolic link"):
        lake.storage.delete(["7/mp_master_event/2026/05/02/part-x-00000.parquet"])
    assert lake.repair(TABLE, DAY) == 0
    assert (elsewhere / "part-x-00000.parquet").read_bytes() == b"not ours"


def test_a_store_that_ignores_conditional_writes_is_refused_at_connect(
    block: BucketDestination, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = type(block.store())
    real = kind._put
    monkeypatch.setattr(
        kind, "_put", lambda self, key, data, create, if_version: real(self, key, data, False, None)
    )
    with pytest.raises(
        FatalError, match=r"ignores conditional writes \(create-if-absent\) on .*: use a store"
    ):
        block.connect(7)
