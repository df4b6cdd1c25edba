"""Azure quirks only (the contract is tests/destinations/test_store_contract.py): connection strings (key or SAS),
no secret in locations, a read-only SAS named with its fix, container names, spent retries."""

from __future__ import annotations

import time

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from prefect_azure import AzureBlobStorageCredentials

from blocks.destinations.azure import AzureBlobDestination
from tasks.errors import BadCredentialsError, PermissionDeniedError, ServerError
from tests.stores.azure import ACCOUNT, KEY, AzuriteServer, inject_azure_errors, make_azure_destination


def endpoint(server: AzuriteServer) -> str:
    return f"http://127.0.0.1:{server.port}/{ACCOUNT}"


def _sas_destination(
    server: AzuriteServer, container: str, permission: ContainerSasPermissions
) -> AzureBlobDestination:
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    sas = generate_container_sas(ACCOUNT, container, account_key=KEY, permission=permission, expiry=expiry)
    connection = f"BlobEndpoint={endpoint(server)};SharedAccessSignature={sas}"
    return AzureBlobDestination(
        credentials=AzureBlobStorageCredentials(connection_string=connection), container=container
    )


def test_keys_live_under_the_prefix_and_locations_carry_no_secret(azure_server: AzuriteServer) -> None:
    block = make_azure_destination(azure_server, prefix="exports/mp")
    storage = block.connect(7).storage
    storage.put_bytes("7/k", b"v")
    names = [b.name for b in azure_server.service().get_container_client(block.container).list_blobs()]
    assert names == ["exports/mp/7/k"], "the connect probe was removed"
    assert storage.describe("7/k") == f"{endpoint(azure_server)}/{block.container}/exports/mp/7/k"
    full = ContainerSasPermissions(read=True, write=True, list=True, delete=True, create=True, add=True)
    via_sas = _sas_destination(azure_server, block.container, full).connect(7).storage
    assert via_sas.describe("7/k") == f"{endpoint(azure_server)}/{block.container}/7/k", "no SAS token"
    assert via_sas.get_bytes("exports/mp/7/k") == b"v"


def test_connect_without_write_permission_says_so(azure_server: AzuriteServer) -> None:
    block = make_azure_destination(azure_server)
    read_only = _sas_destination(azure_server, block.container, ContainerSasPermissions(read=True, list=True))
    with pytest.raises(PermissionDeniedError) as info:
        read_only.connect(7)
    where = f"container {block.container} at {endpoint(azure_server)}"
    assert str(info.value) == (
        f"the identity of the AzureBlobStorageCredentials block ({where}) lacks write access on {where}: "
        "grant it the Storage Blob Data Contributor role or use a key that allows it."
    )


def test_a_malformed_connection_string_says_so() -> None:
    block = AzureBlobDestination(
        credentials=AzureBlobStorageCredentials(connection_string="AccountKey"), container="abc"
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


def test_errors_beyond_the_retries_are_retriable_errors(azure_server: AzuriteServer) -> None:
    storage = make_azure_destination(azure_server, through_proxy=True).store()  # retry_total=3
    inject_azure_errors(azure_server, 503, 4)
    try:
        with pytest.raises(
            ServerError, match=r"^Azure Blob Storage kept failing \(.*\) to write .* after 4 attempts"
        ):
            storage.put_bytes("k", b"v")
        inject_azure_errors(azure_server, 0, 4)
        with pytest.raises(ServerError, match="to read"):
            storage.get_bytes("k")
    finally:
        inject_azure_errors(azure_server, 0, 0)
