"""The GCS destination against a real Cloud Storage server on loopback (see tests/stores/gcs.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from blocks.destinations.gcs import GcsStorage, Lease
from tasks.errors import (
    FatalError,
    PermissionDeniedError,
    ServerError,
)
from tasks.objectstore import ObjectStoreDestination
from tests.stores.gcs import CLIENT_EMAIL, EMULATOR, GcsServer, inject_gcs_errors, make_gcs_destination

KiB = 1 << 10
MiB = 1 << 20


@pytest.fixture
def dest(gcs_server: GcsServer) -> ObjectStoreDestination:
    return make_gcs_destination(gcs_server, prefix="exports").connect(7)


@pytest.fixture
def storage(dest: ObjectStoreDestination) -> GcsStorage:
    assert isinstance(dest.storage, GcsStorage)
    return dest.storage


def second_storage(storage: GcsStorage, gcs_server: GcsServer, **options: float) -> GcsStorage:
    """Another client on the same bucket and prefix, as another worker would have."""
    block = make_gcs_destination(gcs_server, bucket=storage.bucket_name)
    other = GcsStorage(block.bucket, "exports", **options)  # type: ignore[arg-type]
    other.conditional_writes = storage.conditional_writes
    return other


def requests_since(gcs_server: GcsServer, start: int, method: str, marker: str) -> int:
    return sum(1 for m, path, _ in gcs_server.proxy.requests[start:] if m == method and marker in path)


# the block ------------------------------------------------------------------------------------


def test_connect_leaves_no_probe_behind_and_detects_preconditions(
    gcs_server: GcsServer, storage: GcsStorage
) -> None:
    assert storage.list("") == []  # the probe object is gone
    assert storage.conditional_writes is gcs_server.honours_preconditions


def test_a_missing_permission_is_named(gcs_server: GcsServer) -> None:
    block = make_gcs_destination(gcs_server)
    inject_gcs_errors(gcs_server, 403, 1)  # the connect check's first call is the listing
    with pytest.raises(PermissionDeniedError) as caught:
        block.connect(7)
    assert str(caught.value) == (
        f"the service account {CLIENT_EMAIL} lacks storage.objects.list on bucket "
        f"{block.bucket.bucket}: grant it roles/storage.objectAdmin on the bucket."
    )


def test_errors_past_the_retry_deadline_are_retriable(gcs_server: GcsServer, storage: GcsStorage) -> None:
    impatient = second_storage(storage, gcs_server, retry_deadline_seconds=1.0)
    inject_gcs_errors(gcs_server, 503, 1000)
    try:
        with pytest.raises(
            ServerError,
            match=r"kept failing \(503\) on gs://.*/exports/x for 1 s: the unit will be retried\.$",
        ):
            impatient.put_bytes("x", b"1")
    finally:
        inject_gcs_errors(gcs_server, 0, 0)


# the storage methods --------------------------------------------------------------------------


def test_put_get_describe_and_a_missing_key(storage: GcsStorage) -> None:
    storage.put_bytes("a/b.json", b'{"x": 1}')
    storage.put_bytes("a/b.json", b'{"x": 2}')  # overwrites whole
    assert storage.get_bytes("a/b.json") == b'{"x": 2}'
    assert storage.get_bytes("a/missing.json") is None
    assert storage.describe("a/b.json") == f"gs://{storage.bucket_name}/exports/a/b.json"
    assert storage.local_path("a/b.json") is None
    raw = storage.client.bucket(storage.bucket_name).get_blob("exports/a/b.json")
    assert raw is not None and raw.size == 8  # the prefix is a folder inside the bucket


def test_list_is_recursive_sorted_relative_and_follows_pages(
    gcs_server: GcsServer, storage: GcsStorage
) -> None:
    storage.page_size = 2
    keys = [f"l/{i}.bin" for i in (3, 0, 6, 1, 5, 2, 4)] + ["l/sub/deep.bin"]
    for key in keys:
        storage.put_bytes(key, b"x" * len(key))
    storage.put_bytes("l2/not-in-l.bin", b"x")  # a sibling folder sharing the prefix's first letters
    start = len(gcs_server.proxy.requests)
    found = storage.list("l")
    assert [i.key for i in found] == sorted(keys)
    assert [i.size for i in found] == [len(k) for k in sorted(keys)]
    assert all(abs(i.modified - time.time()) < 600 for i in found)
    pages = requests_since(gcs_server, start, "GET", f"/b/{storage.bucket_name}/o?")
    assert pages == (4 if gcs_server.paginates else 1)  # the emulator ignores maxResults


def test_move_copies_on_the_server_then_deletes_the_source(storage: GcsStorage) -> None:
    storage.put_bytes("_staging/part-0.parquet", b"data")
    storage.move("_staging/part-0.parquet", "final/part-0.parquet")
    assert storage.get_bytes("final/part-0.parquet") == b"data"
    assert storage.get_bytes("_staging/part-0.parquet") is None
    storage.move("_staging/part-0.parquet", "final/part-0.parquet")  # a repeated move is done already
    with pytest.raises(
        FatalError, match=r"gs://.*/exports/_staging/gone does not exist, so it cannot be moved"
    ):
        storage.move("_staging/gone", "final/gone")


def test_delete_goes_in_batches_and_ignores_missing_keys(gcs_server: GcsServer, storage: GcsStorage) -> None:
    storage.delete_batch = 10
    keys = [f"d/{i:02}" for i in range(15)]
    for key in keys:
        storage.put_bytes(key, b"")
    start = len(gcs_server.proxy.requests)
    inject_gcs_errors(gcs_server, 503, 1)  # the first batch request fails whole: its 10 go one by one
    storage.delete([*keys, "d/missing", "d/00"])
    assert storage.list("d") == []
    batches = requests_since(gcs_server, start, "POST", "/batch/storage/v1")
    singles = requests_since(gcs_server, start, "DELETE", "/o/exports%2Fd%2F")
    # 16 names: a failed batch of 10 and a batch of 6; fake-gcs-server answers a batch holding a 404
    # with an empty multipart, which the client cannot read: those 6 go one by one too
    assert (batches, singles) == (2, 10 if gcs_server.kind == EMULATOR else 16)
    storage.delete([])


def test_upload_streams_a_large_file_in_chunks(
    gcs_server: GcsServer, storage: GcsStorage, tmp_path: Path
) -> None:
    storage.chunk_size = 256 * KiB
    local = tmp_path / "big.parquet"
    data = os.urandom(9 * MiB + 1234)  # above 8 MiB the client switches to a resumable upload
    local.write_bytes(data)
    start = len(gcs_server.proxy.requests)
    storage.upload(local, "big/part-00000.parquet")
    assert storage.get_bytes("big/part-00000.parquet") == data
    chunks = requests_since(gcs_server, start, "PUT", "upload_id=")
    assert chunks == -(-len(data) // storage.chunk_size)  # one request per 256 KiB chunk


def test_a_resumable_upload_resumes_after_transient_errors(
    gcs_server: GcsServer, storage: GcsStorage, tmp_path: Path
) -> None:
    storage.chunk_size = 256 * KiB
    local = tmp_path / "big.parquet"
    data = os.urandom(9 * MiB)
    local.write_bytes(data)
    start = len(gcs_server.proxy.requests)
    inject_gcs_errors(gcs_server, 503, 2, after=5)  # in the middle of the chunks
    storage.upload(local, "big/part-00001.parquet")
    assert [s for _, _, s in gcs_server.proxy.requests[start:]].count(503) == 2
    assert storage.get_bytes("big/part-00001.parquet") == data


# the lock -------------------------------------------------------------------------------------


def test_the_lock_excludes_a_second_holder_until_released(gcs_server: GcsServer, storage: GcsStorage) -> None:
    # a lease of 0.6 s renewed every 0.2 s while held: a hold of 1.5 s must not be taken over
    other = second_storage(storage, gcs_server, lease_seconds=0.6, clock_skew_seconds=0.0)
    storage.lease_seconds = 0.6
    events: list[str] = []
    held = threading.Event()

    def first() -> None:
        with storage.lock("7/mp_master_event/2026-05-01"):
            events.append("first in")
            held.set()
            time.sleep(1.5)
            events.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    with other.lock("7/mp_master_event/2026-05-01"):
        events.append("second in")
    thread.join()
    assert events == ["first in", "first out", "second in"]
    assert storage.list("_locks/") == []  # release deletes the lock object


def test_the_lock_serialises_read_modify_write_across_workers(
    gcs_server: GcsServer, storage: GcsStorage
) -> None:
    workers = [storage, *(second_storage(storage, gcs_server) for _ in range(2))]
    storage.put_bytes("counter", b"0")
    errors: list[BaseException] = []

    def work(worker: GcsStorage) -> None:
        try:
            for _ in range(2):
                with worker.lock("counter"):  # a lost update would show in the final count
                    value = int(worker.get_bytes("counter") or b"0")
                    time.sleep(0.05)
                    worker.put_bytes("counter", str(value + 1).encode())
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert storage.get_bytes("counter") == b"6"


def test_an_expired_lease_is_taken_over(gcs_server: GcsServer, storage: GcsStorage) -> None:
    crashed = Lease(storage, "_locks/7.t.p.lock")
    stale = crashed._fields() | {"expires_epoch": f"{time.time() - 60:.3f}"}
    assert storage.write_if_generation(crashed.key, stale, 0) is not None  # a holder that died
    with storage.lock("7/t/p"):
        state = storage.read_lock("_locks/7.t.p.lock")
        assert state is not None and state.fields["token"] != crashed.token
    assert storage.read_lock("_locks/7.t.p.lock") is None


def test_waiting_for_a_held_lock_ends_with_a_fatal_error(gcs_server: GcsServer, storage: GcsStorage) -> None:
    other = second_storage(storage, gcs_server, wait_seconds=0.5)
    with storage.lock("7/t/p"), pytest.raises(FatalError) as caught, other.lock("7/t/p"):
        pass
    where = f"gs://{storage.bucket_name}/exports/_locks/7.t.p.lock"
    message = str(caught.value)
    assert message.startswith(f"waited 0.5 s for the lock {where} held by ")
    assert message.endswith(
        f": if no run is active, delete that object (gcloud storage rm {where}) and start again."
    )
