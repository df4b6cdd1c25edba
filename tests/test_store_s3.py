"""The S3 destination against a real S3 API on loopback (moto's server behind a fault proxy)."""

from __future__ import annotations

import json
import os
import pickle
import re
import threading
import time
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from blocks.destinations.s3 import S3Destination, S3Storage
from tasks.errors import FatalError, PermissionDeniedError, ServerError
from tasks.objectstore import ObjectStoreDestination
from tests.stores.s3 import S3Server, inject_s3_errors, make_s3_destination

LOCK = "7/mp_master_event/2026-05-01"
MiB = 1 << 20


def storage_of(destination: ObjectStoreDestination) -> S3Storage:
    storage = destination.storage
    assert isinstance(storage, S3Storage)
    return storage


@pytest.fixture
def block(s3_server: S3Server) -> S3Destination:
    return make_s3_destination(s3_server, prefix="exports/raw")


@pytest.fixture
def storage(block: S3Destination) -> S3Storage:
    return storage_of(block.connect(7))


@pytest.fixture(autouse=True)
def _no_faults_left(s3_server: S3Server) -> None:
    inject_s3_errors(s3_server, 503, 0)


# the Storage methods --------------------------------------------------------------------------


def test_keys_live_under_the_prefix_and_connect_leaves_no_probe(
    s3_server: S3Server, block: S3Destination, storage: S3Storage
) -> None:
    storage.put_bytes("a/b.txt", b"hello")
    bucket = block.bucket.bucket_name
    assert storage.describe("a/b.txt") == f"s3://{bucket}/exports/raw/a/b.txt"
    assert storage.local_path("a/b.txt") is None
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["exports/raw/a/b.txt"], "the connect probe was removed"
    assert storage.client.meta.endpoint_url == s3_server.endpoint_url
    assert storage.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}


def test_put_get_overwrite_and_missing(storage: S3Storage) -> None:
    assert storage.get_bytes("nothing/here") is None
    storage.put_bytes("k", b"one")
    storage.put_bytes("k", b"two")
    assert storage.get_bytes("k") == b"two"


def test_list_is_recursive_relative_sorted_and_follows_pages(s3_server: S3Server, storage: S3Storage) -> None:
    storage.page_size = 7
    keys = [f"p/{i % 3}/k{i:02d}" for i in range(30)]
    for key in [*keys, "p2/not-in-p", "q"]:
        storage.put_bytes(key, key.encode())
    seen = len(s3_server.proxy.requests)
    listed = storage.list("p")
    assert [i.key for i in listed] == sorted(keys)
    assert [i.size for i in listed] == [len(k) for k in sorted(keys)]
    assert all(abs(i.modified - time.time()) < 120 for i in listed)
    pages = [r for r in s3_server.proxy.requests[seen:] if "list-type=2" in r.path]
    assert len(pages) == 5, "30 keys in pages of 7"
    assert [i.key for i in storage.list("")] == sorted([*keys, "p2/not-in-p", "q"])
    assert storage.list("missing/") == []


def test_move_is_copy_then_delete(storage: S3Storage) -> None:
    storage.put_bytes("_staging/a.parquet", b"data")
    storage.move("_staging/a.parquet", "final/a.parquet")
    assert storage.get_bytes("_staging/a.parquet") is None
    assert storage.get_bytes("final/a.parquet") == b"data"


def test_delete_batches_and_ignores_missing_keys(s3_server: S3Server, storage: S3Storage) -> None:
    storage.delete_batch = 10
    keys = [f"d/{i:02d}" for i in range(25)]
    for key in keys:
        storage.put_bytes(key, b"x")
    storage.put_bytes("keep", b"x")
    seen = len(s3_server.proxy.requests)
    storage.delete([*keys, "never/existed", keys[0]])
    assert len([r for r in s3_server.proxy.requests[seen:] if r.method == "POST" and "delete" in r.path]) == 3
    assert [i.key for i in storage.list("")] == ["keep"]
    storage.delete([])


def test_upload_streams_a_large_file_in_parts(
    s3_server: S3Server, storage: S3Storage, tmp_path: Path
) -> None:
    storage.transfer = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2
    )
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(12 * MiB))
    storage.upload(local, "big/part-00000.parquet")
    head = s3_server.client().head_object(
        Bucket=storage.bucket, Key=storage.full_key("big/part-00000.parquet")
    )
    assert head["ETag"].endswith('-3"'), "three parts of at most 5 MiB, uploaded as a multipart upload"
    assert storage.get_bytes("big/part-00000.parquet") == local.read_bytes()


# transient errors are retried by botocore's policy ---------------------------------------------


def test_spent_retries_make_the_unit_retriable(s3_server: S3Server, block: S3Destination) -> None:
    storage = S3Storage(block.bucket, block.prefix, max_attempts=2)
    inject_s3_errors(s3_server, 500, 2)
    with pytest.raises(ServerError, match=r"^S3 kept answering InternalError to s3:PutObject on s3://"):
        storage.put_bytes("x", b"x")


# connect: one sentence that says what to fix ---------------------------------------------------


def test_missing_permission(s3_server: S3Server) -> None:
    bucket = make_s3_destination(s3_server).bucket.bucket_name
    with pytest.raises(PermissionDeniedError) as caught:
        make_s3_destination(s3_server, bucket=bucket, reader=True).connect(1)
    assert str(caught.value) == (
        f"the identity of the S3Bucket block for bucket {bucket} lacks s3:PutObject on bucket {bucket}: "
        "grant it in its IAM policy."
    )


def test_the_block_pickles_for_subprocess_runs(block: S3Destination) -> None:
    clone = pickle.loads(pickle.dumps(block))
    storage_of(clone.connect(1)).put_bytes("from-clone", b"1")
    assert storage_of(block.connect(1)).get_bytes("from-clone") == b"1"


# the lock ---------------------------------------------------------------------------------------


def test_the_lock_excludes_other_holders(s3_server: S3Server, block: S3Destination) -> None:
    active, most, errors = [0], [0], []
    guard = threading.Lock()

    def worker() -> None:
        storage = storage_of(block.connect(7))  # each worker its own storage, like another machine
        try:
            for _ in range(4):
                with storage.lock(LOCK):
                    with guard:
                        active[0] += 1
                        most[0] = max(most[0], active[0])
                    count = int(storage.get_bytes("counter") or b"0")
                    time.sleep(0.03)
                    storage.put_bytes("counter", str(count + 1).encode())
                    with guard:
                        active[0] -= 1
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    storage = storage_of(block.connect(7))
    assert (storage.get_bytes("counter"), most[0]) == (b"8", 1)
    assert storage.list("_locks/") == [], "release deletes the lock object"


def test_the_lock_object_holds_an_expiry_and_sits_under_locks(
    s3_server: S3Server, storage: S3Storage
) -> None:
    with storage.lock(LOCK):
        body = json.loads(storage.get_bytes("_locks/7.mp_master_event.2026-05-01.lock") or b"{}")
    assert body["lease_seconds"] == 2.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    assert body["holder"].split(":")[1] == str(os.getpid())


def test_an_expired_lease_is_taken_over(storage: S3Storage) -> None:
    key = "_locks/7.mp_master_event.2026-05-01.lock"
    storage.put_bytes(key, json.dumps({"token": "dead", "holder": "gone:1:1", "lease_seconds": 1}).encode())
    started = time.monotonic()
    with storage.lock(LOCK):
        assert json.loads(storage.get_bytes(key) or b"{}")["token"] != "dead"
    assert time.monotonic() - started < 10
    assert storage.get_bytes(key) is None


def test_a_renewed_lease_is_not_taken_over_and_the_wait_ends_with_how_to_fix(block: S3Destination) -> None:
    holder = storage_of(block.model_copy(update={"lock_lease_seconds": 1.0}).connect(7))
    waiter = storage_of(block.model_copy(update={"lock_wait_seconds": 2.0}).connect(7))
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.lock(LOCK):
            taken.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert taken.wait(10)
        with pytest.raises(FatalError) as caught, waiter.lock(LOCK):
            pass
    finally:
        done.set()
        thread.join()
    where = f"s3://{block.bucket.bucket_name}/exports/raw/_locks/7.mp_master_event.2026-05-01.lock"
    pattern = (
        rf"waited 2 s for the lock {re.escape(where)} held by [^:]+:{os.getpid()}:\d+: if no run is active, "
        rf"delete that object \(aws s3 rm {re.escape(where)}\) and start again\."
    )
    assert re.fullmatch(pattern, str(caught.value)), str(caught.value)
