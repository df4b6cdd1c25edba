"""GCS quirks only (the contract is tests/destinations/test_store_contract.py): google-cloud-storage with generation
preconditions on fake-gcs-server, the service account named when a right is missing, the retry
deadline, resumable uploads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blocks.destinations.gcs import GcsDestination
from tasks.errors import PermissionDeniedError, ServerError
from tasks.lake.gcs_store import GcsStore
from tasks.lake.store import RetryPolicy
from tests.stores.gcs import CLIENT_EMAIL, GcsServer, inject_gcs_errors, make_gcs_destination

MiB = 1 << 20


@pytest.fixture
def block(gcs_server: GcsServer) -> GcsDestination:
    inject_gcs_errors(gcs_server, 0, 0)
    return make_gcs_destination(gcs_server, prefix="exports")


def test_versions_are_generations(block: GcsDestination) -> None:
    storage = block.connect(7).storage
    assert isinstance(storage, GcsStore)
    first = storage.put_bytes("m.json", b"1", create=True)
    got = storage.get("m.json")
    assert got is not None and got.version == first and first.isdigit()
    assert storage.describe("m.json") == f"gs://{block.bucket.bucket}/exports/m.json"
    assert [i.key for i in storage.list("")] == ["m.json"], "the connect probe was removed"


def test_a_missing_permission_is_named(gcs_server: GcsServer, block: GcsDestination) -> None:
    inject_gcs_errors(gcs_server, 403, 1)  # the connect check's first call is the listing
    with pytest.raises(PermissionDeniedError) as caught:
        block.connect(7)
    bucket = block.bucket.bucket
    assert str(caught.value) == (
        f"the identity of the GcsBucket block for bucket {bucket} (the service account {CLIENT_EMAIL}) lacks "
        f"storage.objects.list on bucket {bucket}: grant it roles/storage.objectAdmin on the bucket."
    )


def test_errors_past_the_retry_deadline_are_retriable(gcs_server: GcsServer, block: GcsDestination) -> None:
    storage = block.store(RetryPolicy(initial_backoff=0.1, max_backoff=0.2, deadline_seconds=1.0))
    inject_gcs_errors(gcs_server, 503, 1000)
    try:
        with pytest.raises(ServerError, match=r"kept failing \(503\) to write gs://.*/exports/x after"):
            storage.put_bytes("x", b"1")
    finally:
        inject_gcs_errors(gcs_server, 0, 0)


def test_a_resumable_upload_resumes_after_transient_errors(
    gcs_server: GcsServer, block: GcsDestination, tmp_path: Path
) -> None:
    storage = block.store()
    local = tmp_path / "big.parquet"
    data = os.urandom(9 * MiB)  # above 8 MiB the client switches to a resumable upload
    local.write_bytes(data)
    start = len(gcs_server.proxy.requests)
    inject_gcs_errors(gcs_server, 503, 1, after=1)
    storage.upload(local, "big/part-00001.parquet")
    assert [s for _, _, s in gcs_server.proxy.requests[start:]].count(503) == 1
    assert storage.get_bytes("big/part-00001.parquet") == data
