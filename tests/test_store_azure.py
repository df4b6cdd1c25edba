"""The Azure Blob destination against a real Azurite on loopback: every Storage method, the lock,
connect's one-sentence errors, retries of injected 5xx, and the commit protocol end to end."""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from prefect_azure import AzureBlobStorageCredentials

from blocks.destinations.azure import AzureBlobDestination, AzureBlobStorage
from tasks.errors import (
    BadCredentialsError,
    ConnectionDroppedError,
    FatalError,
    PermissionDeniedError,
    ServerError,
)
from tasks.objectstore import ObjectStoreDestination
from tests.stores.azure import ACCOUNT, KEY, AzuriteServer, inject_azure_errors, make_azure_destination

MiB = 1 << 20


@pytest.fixture
def block(azure_server: AzuriteServer) -> AzureBlobDestination:
    return make_azure_destination(azure_server, prefix="exports/mp")


@pytest.fixture
def storage(block: AzureBlobDestination) -> AzureBlobStorage:
    return block.storage()


def endpoint(server: AzuriteServer) -> str:
    return f"http://127.0.0.1:{server.port}/{ACCOUNT}"


# --- Storage methods -------------------------------------------------------------------------------


def test_put_get_overwrite_and_missing(storage: AzureBlobStorage) -> None:
    assert storage.local_path("a") is None
    assert storage.get_bytes("7/_state/x.json") is None
    storage.put_bytes("7/_state/x.json", b"one")
    storage.put_bytes("7/_state/x.json", b"two")
    assert storage.get_bytes("7/_state/x.json") == b"two"


def test_keys_live_under_the_prefix_and_describe_has_no_secret(
    azure_server: AzuriteServer, block: AzureBlobDestination, storage: AzureBlobStorage
) -> None:
    storage.put_bytes("7/k", b"v")
    names = [b.name for b in azure_server.service().get_container_client(block.container).list_blobs()]
    assert names == ["exports/mp/7/k"]
    assert storage.describe("7/k") == f"{endpoint(azure_server)}/{block.container}/exports/mp/7/k"
    via_sas = _sas_destination(azure_server, block.container, ContainerSasPermissions(read=True)).storage()
    assert via_sas.describe("7/k") == f"{endpoint(azure_server)}/{block.container}/7/k", "no SAS token"


def test_list_is_recursive_relative_sorted_and_follows_pages(azure_server: AzuriteServer) -> None:
    block = make_azure_destination(azure_server, prefix="p", through_proxy=True)
    storage = block.storage(list_page_size=2)
    for key in ["a/3", "a/1", "a/sub/2", "a/sub/deeper/0", "a/0", "b/outside", "a-sibling"]:
        storage.put_bytes(key, key.encode())
    before = len(azure_server.proxy.requests)
    listed = storage.list("a/")
    assert [i.key for i in listed] == ["a/0", "a/1", "a/3", "a/sub/2", "a/sub/deeper/0"]
    assert [i.size for i in listed] == [3, 3, 3, 7, 14]
    assert all(abs(i.modified - time.time()) < 120 for i in listed)
    pages = [r for r in azure_server.proxy.requests[before:] if "comp=list" in r.path]
    assert len(pages) == 3 and all("maxresults=2" in r.path for r in pages)
    assert sum("marker=" in r.path for r in pages) == 2, "continuation markers were followed"
    assert storage.list("nothing/") == []


def test_move_copies_server_side_and_removes_the_source(storage: AzureBlobStorage) -> None:
    storage.put_bytes("7/_staging/r/part-0.parquet", b"data")
    storage.move("7/_staging/r/part-0.parquet", "7/mp_master_event/2026/05/01/part-r-0.parquet")
    assert storage.get_bytes("7/mp_master_event/2026/05/01/part-r-0.parquet") == b"data"
    assert storage.get_bytes("7/_staging/r/part-0.parquet") is None


def test_delete_uses_batches_of_256_and_ignores_missing_keys(azure_server: AzuriteServer) -> None:
    block = make_azure_destination(azure_server, through_proxy=True)
    direct = make_azure_destination(azure_server, container=block.container).storage()
    keys = [f"d/{i:03d}" for i in range(260)]
    for key in [*keys, "keep"]:
        direct.put_bytes(key, b"x")
    storage = block.storage()
    before = len(azure_server.proxy.requests)
    storage.delete([*keys, "d/missing"])
    batches = [r for r in azure_server.proxy.requests[before:] if "comp=batch" in r.path]
    assert len(batches) == 2
    assert [i.key for i in storage.list("")] == ["keep"]
    storage.delete([])
    storage.delete(["d/never-there"])


def test_upload_streams_a_multi_block_file(
    azure_server: AzuriteServer, block: AzureBlobDestination, tmp_path: Path
) -> None:
    storage = block.storage(client_options={"max_single_put_size": MiB, "max_block_size": MiB})
    local = tmp_path / "big.parquet"
    local.write_bytes(os.urandom(12 * MiB + 123))
    tracemalloc.start()
    try:
        storage.upload(local, "7/big.parquet")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"the upload held {peak / MiB:.1f} MiB: the file was not streamed"
    blob = azure_server.service().get_blob_client(block.container, "exports/mp/7/big.parquet")
    committed, _ = blob.get_block_list("committed")
    assert len(committed) == 13
    assert storage.get_bytes("7/big.parquet") == local.read_bytes()


# --- The lock ----------------------------------------------------------------------------------------


def test_conditional_create_and_etag_delete_are_honoured_by_azurite(
    azure_server: AzuriteServer, block: AzureBlobDestination
) -> None:
    blob = azure_server.service().get_blob_client(block.container, "cond")
    etag = blob.upload_blob(b"1", overwrite=False)["etag"]
    with pytest.raises(ResourceExistsError) as exists:
        blob.upload_blob(b"2", overwrite=False)
    assert (exists.value.status_code, exists.value.error_code) == (409, "BlobAlreadyExists")
    with pytest.raises(ResourceExistsError):
        blob.upload_blob(b"2", overwrite=True, match_condition=MatchConditions.IfMissing)
    with pytest.raises(ResourceModifiedError) as stale:
        blob.delete_blob(etag='"0x1"', match_condition=MatchConditions.IfNotModified)
    assert stale.value.status_code == 412
    blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)


def hold(storage: AzureBlobStorage, name: str, seconds: float, spans: list[tuple[float, float]]) -> None:
    with storage.lock(name):
        start = time.monotonic()
        time.sleep(seconds)
        spans.append((start, time.monotonic()))


def test_the_lock_excludes_a_second_holder_and_renews_past_its_ttl(block: AzureBlobDestination) -> None:
    # two clients as two machines would have; the first holds 3 TTLs, so only renewals keep it
    first = block.storage(lock_ttl_seconds=0.4)
    second = block.storage(lock_ttl_seconds=0.4)
    spans: list[tuple[float, float]] = []
    holder = threading.Thread(target=hold, args=(first, "7/mp_master_event/2026-05-01", 1.2, spans))
    holder.start()
    time.sleep(0.2)
    hold(second, "7/mp_master_event/2026-05-01", 0.0, spans)
    holder.join()
    (a_start, a_end), (b_start, _) = spans
    assert a_start < a_end <= b_start, "the second holder entered while the first held the lock"
    assert first.list("_locks/") == []


def test_an_expired_lock_of_a_crashed_run_is_taken_over(block: AzureBlobDestination) -> None:
    storage = block.storage(lock_wait_seconds=2.0)
    dead = {"owner": "crashed-host:4242:deadbeef", "expires": time.time() - 1}
    storage.put_bytes("_locks/7.mp_master_event.2026-05-01.lock", json.dumps(dead).encode())
    started = time.monotonic()
    with storage.lock("7/mp_master_event/2026-05-01"):
        body = json.loads(storage.get_bytes("_locks/7.mp_master_event.2026-05-01.lock") or b"{}")
        assert body["owner"] != dead["owner"] and body["expires"] > time.time()
    assert time.monotonic() - started < 1.0
    assert storage.list("_locks/") == []


def test_a_lock_held_past_the_wait_fails_naming_it_and_how_to_remove_it(block: AzureBlobDestination) -> None:
    holder = block.storage()
    waiter = block.storage(lock_wait_seconds=0.3)
    with holder.lock("7/t/p"), pytest.raises(FatalError) as info:
        waiter.lock("7/t/p").__enter__()
    where = waiter.describe("_locks/7.t.p.lock")
    assert str(info.value).startswith(f"the lock {where} is still held by ")
    assert str(info.value).endswith(
        "after 0.3 s: let that run finish, or delete the blob if no run is active."
    )


# --- connect ----------------------------------------------------------------------------------------


def test_connect_probes_and_returns_the_destination(block: AzureBlobDestination) -> None:
    dest = block.connect(7)
    assert isinstance(dest, ObjectStoreDestination)
    assert dest.storage.list("") == [], "the probe blob was removed"


def test_connect_without_write_permission_says_so(
    azure_server: AzuriteServer, block: AzureBlobDestination
) -> None:
    read_only = _sas_destination(azure_server, block.container, ContainerSasPermissions(read=True, list=True))
    with pytest.raises(PermissionDeniedError) as info:
        read_only.connect(7)
    assert str(info.value) == (
        f"the AzureBlobStorageCredentials block lacks write access to container {block.container} at "
        f"{endpoint(azure_server)}: grant it the Storage Blob Data Contributor role or use a key that allows it."
    )


def test_a_malformed_connection_string_says_so() -> None:
    block = AzureBlobDestination(
        credentials=AzureBlobStorageCredentials(connection_string="AccountKey=only"), container="abc"
    )
    with pytest.raises(
        BadCredentialsError, match="connection string of the AzureBlobStorageCredentials block"
    ):
        block.connect(7)


def test_a_bad_container_name_is_refused_by_the_block() -> None:
    with pytest.raises(ValueError, match="3 to 63 lowercase letters"):
        AzureBlobDestination(
            credentials=AzureBlobStorageCredentials(connection_string="x"), container="Bad_Name"
        )


def _sas_destination(
    server: AzuriteServer, container: str, permission: ContainerSasPermissions
) -> AzureBlobDestination:
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    sas = generate_container_sas(ACCOUNT, container, account_key=KEY, permission=permission, expiry=expiry)
    connection = f"BlobEndpoint=http://127.0.0.1:{server.port}/{ACCOUNT};SharedAccessSignature={sas}"
    return AzureBlobDestination(
        credentials=AzureBlobStorageCredentials(connection_string=connection), container=container
    )


# --- transient errors ---------------------------------------------------------------------------------


def test_errors_beyond_the_retries_are_retriable_errors(azure_server: AzuriteServer) -> None:
    storage = make_azure_destination(azure_server, through_proxy=True).storage()  # retry_total=3
    inject_azure_errors(azure_server, 503, 4)
    with pytest.raises(
        ServerError, match=r"kept failing to write .* \(503 ServerBusy\) after the configured"
    ):
        storage.put_bytes("k", b"v")
    inject_azure_errors(azure_server, 0, 4)
    with pytest.raises(ConnectionDroppedError, match="could not be reached to read"):
        storage.get_bytes("k")
    inject_azure_errors(azure_server, 0, 0)
