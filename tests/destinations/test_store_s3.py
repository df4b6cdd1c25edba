"""S3 quirks only (the contract is tests/destinations/test_store_contract.py): the bucket folder and prefix, multipart
uploads, the IAM right named when missing, spent retries, a block that pickles for subprocess runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from blocks.destinations.s3 import S3Destination
from tasks.errors import PermissionDeniedError, ServerError
from tasks.lake.store import RetryPolicy
from tests.stores.s3 import S3Server, inject_s3_errors, make_s3_destination

MiB = 1 << 20


@pytest.fixture
def block(s3_server: S3Server) -> S3Destination:
    inject_s3_errors(s3_server, 503, 0)
    made = make_s3_destination(s3_server, prefix="raw")
    made.bucket.bucket_folder = "exports"
    return made


def test_keys_live_under_the_bucket_folder_and_prefix(s3_server: S3Server, block: S3Destination) -> None:
    storage = block.connect(7).storage
    storage.put_bytes("a/b.txt", b"hello")
    bucket = block.bucket.bucket_name
    assert storage.describe("a/b.txt") == f"s3://{bucket}/exports/raw/a/b.txt"
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["exports/raw/a/b.txt"], "the connect probe was removed"


def test_a_large_upload_goes_in_parts(s3_server: S3Server, block: S3Destination, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(20 * MiB))
    storage = block.store()
    storage.upload(local, "big/part-00000.parquet")
    head = s3_server.client().head_object(
        Bucket=block.bucket.bucket_name, Key="exports/raw/big/part-00000.parquet"
    )
    assert head["ETag"].endswith('-2"'), "two parts of at most 16 MiB, as a multipart upload"
    assert storage.get_bytes("big/part-00000.parquet") == local.read_bytes()


def test_spent_retries_make_the_unit_retriable(s3_server: S3Server, block: S3Destination) -> None:
    storage = block.store(RetryPolicy(max_attempts=2, initial_backoff=0.01))
    inject_s3_errors(s3_server, 500, 2)
    with pytest.raises(
        ServerError, match=r"^S3 kept failing \(InternalError\) to write s3://.* after 2 attempts"
    ):
        storage.put_bytes("x", b"x")


def test_a_missing_right_is_named_with_its_fix(s3_server: S3Server) -> None:
    bucket = make_s3_destination(s3_server).bucket.bucket_name
    with pytest.raises(PermissionDeniedError) as caught:
        make_s3_destination(s3_server, bucket=bucket, reader=True).connect(1)
    assert str(caught.value) == (
        f"the identity of the S3Bucket block for bucket {bucket} lacks s3:PutObject on bucket {bucket}: "
        "grant it in its IAM policy."
    )


def test_the_block_pickles_for_subprocess_runs(block: S3Destination) -> None:
    clone = pickle.loads(pickle.dumps(block))
    clone.connect(1).storage.put_bytes("from-clone", b"1")
    assert block.connect(1).storage.get_bytes("from-clone") == b"1"


def test_a_saved_block_with_the_old_lease_fields_still_loads(block: S3Destination) -> None:
    data = block.model_dump() | {"lock_lease_seconds": 60.0, "lock_wait_seconds": 1800.0}
    assert S3Destination.model_validate(data).connect(1).storage.describe("k").endswith("/raw/k")
