"""Azure Blob Storage as a destination, with the credentials of prefect-azure's block.

The ``AzureBlobStorageCredentials`` block holds a connection string (account key or SAS), or an
account URL with a service principal or the worker's default Azure identity; the store is obstore's
``AzureStore`` built from those fields. Commits need ``If-None-Match: *`` and ``If-Match`` on blobs.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from obstore.store import AzureStore
from prefect_azure import AzureBlobStorageCredentials
from pydantic import Field, field_validator

from blocks.destinations.base import BucketDestination, root_of
from blocks.mixpanel import DOCS_URL
from tasks.errors import BadCredentialsError, FatalError
from tasks.lake.layout import Layout
from tasks.lake.obstore_store import ObstoreStore, retry_config
from tasks.lake.store import Owner, RetryPolicy
from tasks.warehouses.tableformat import Location, Style

if TYPE_CHECKING:  # obstore's typed dicts exist in its stubs only
    from obstore.store import ClientConfig

# obstore's (object_store's) Azure settings → pyiceberg's FileIO properties
ICEBERG_KEYS = {
    "account_name": "adls.account-name",
    "account_key": "adls.account-key",
    "sas_key": "adls.sas-token",
    "client_id": "adls.client-id",
    "client_secret": "adls.client-secret",
    "tenant_id": "adls.tenant-id",
}
EMULATOR_VARIABLE = "AZURITE_BLOB_STORAGE_URL"
CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")


class AzureBlobDestination(BucketDestination):
    """An Azure Blob Storage container that receives Mixpanel's layout:
    <container>/<prefix>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel Azure Blob Destination"
    _documentation_url = DOCS_URL
    _description = (
        "An Azure Blob Storage container (and optional folder) that receives the exported tables, "
        "reached through a prefect-azure Azure Blob Storage Credentials block."
    )

    credentials: AzureBlobStorageCredentials = Field(
        description="The prefect-azure Azure Blob Storage Credentials block: a connection string, or an "
        "account URL with a service principal or the worker's default Azure identity.",
    )
    container: str = Field(description="Name of the existing container that receives the tables.")
    prefix: str = Field(
        default="",
        description="Folder inside the container that receives the tables, e.g. `mixpanel`; empty for the "
        "container's root.",
    )
    retry_total: int = Field(
        default=5,
        ge=0,
        description="Retries of one request that failed transiently (5xx, throttling, a dropped connection).",
    )
    retry_backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Pause before the first retry; later ones double, up to 15 s.",
    )

    @field_validator("container")
    @classmethod
    def _valid_container(cls, value: str) -> str:
        if not CONTAINER_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a container name: use 3 to 63 lowercase letters, digits and single hyphens."
            )
        return value

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.retry_total + 1, initial_backoff=self.retry_backoff_seconds)

    def _block(self) -> str:
        saved = getattr(self.credentials, "_block_document_name", None)
        return f"block '{saved}'" if saved else "the AzureBlobStorageCredentials block"

    def table_location(self, project_id: int, folder: str, style: Style) -> Location:
        """delta-rs reads object_store's keys (the store's own settings); pyiceberg reads ``adls.*``
        FileIO properties for pyarrow's AzureFileSystem."""
        config, endpoint, _ = _config(self.credentials, self._block())
        root = root_of(self.prefix, Layout(str(project_id)).table_format_prefix(folder))
        if style == "delta":
            options = {k: str(v) for k, v in config.items()}
            if endpoint.startswith("http:"):
                options["allow_http"] = "true"
            if urlsplit(endpoint).path.strip("/"):
                options |= _emulated(options.pop("endpoint"))
            return Location(f"az://{self.container}/{root}", options)
        options = {ICEBERG_KEYS[k]: str(v) for k, v in config.items() if k in ICEBERG_KEYS}
        url = urlsplit(endpoint)
        if url.netloc != f"{config['account_name']}.blob.core.windows.net":  # an emulator, a custom domain
            for service in ("blob", "dfs"):
                options[f"adls.{service}-storage-authority"] = url.netloc
                options[f"adls.{service}-storage-scheme"] = url.scheme
        # pyarrow's AzureFileSystem, not fsspec's (adlfs is not a dependency)
        options["py-io-impl"] = "pyiceberg.io.pyarrow.PyArrowFileIO"
        return Location(f"abfs://{self.container}/{root}", options)

    def store(self, retry: RetryPolicy | None = None) -> ObstoreStore:
        block = self._block()
        config, endpoint, fix = _config(self.credentials, block)
        retry = retry or self.retry_policy()
        client: ClientConfig = {"allow_http": True} if endpoint.startswith("http:") else {}
        root = self.prefix.strip("/")
        store = AzureStore(
            self.container,
            prefix=root or None,
            client_options=client,
            retry_config=retry_config(retry),
            **config,
        )
        owner = Owner(
            "Azure Blob Storage",
            f"{block} (container {self.container} at {endpoint})",
            f"container {self.container} at {endpoint}",
            fix,
            "grant it the Storage Blob Data Contributor role or use a key that allows it",
            {
                "write": "write access",
                "read": "read access",
                "list": "list access",
                "delete": "delete access",
            },
        )
        return ObstoreStore(store, f"{endpoint}/{self.container}/{root}".rstrip("/"), owner, retry)


def _config(credentials: AzureBlobStorageCredentials, block: str) -> tuple[dict[str, Any], str, str]:
    """obstore's settings, the blob endpoint (no secret in it) and what to check when refused."""
    if credentials.connection_string is not None:
        text = credentials.connection_string.get_secret_value()
        try:
            fields = dict(part.split("=", 1) for part in text.strip().strip(";").split(";"))
            account = fields.get("AccountName", "")
            endpoint = fields.get("BlobEndpoint") or (
                f"{fields.get('DefaultEndpointsProtocol', 'https')}://{account}.blob."
                f"{fields.get('EndpointSuffix', 'core.windows.net')}"
            )
            if not account and "BlobEndpoint" not in fields:
                raise ValueError("no account")
        except ValueError as exc:
            raise BadCredentialsError(
                f"the connection string of {block} is malformed: copy it again from the storage "
                "account's Access keys page."
            ) from exc
        endpoint = endpoint.rstrip("/")
        config: dict[str, Any] = {"endpoint": endpoint, "account_name": account or _account_of(endpoint)}
        if "AccountKey" in fields:
            config["account_key"] = fields["AccountKey"]
        elif "SharedAccessSignature" in fields:
            config["sas_key"] = fields["SharedAccessSignature"]
        return config, endpoint, "check the account key or connection string"
    url = urlsplit(str(credentials.account_url))
    endpoint = f"{url.scheme}://{url.netloc}{url.path}".rstrip("/")
    config = {"endpoint": endpoint, "account_name": _account_of(endpoint)}
    if credentials.client_id is not None:
        secret = credentials.client_secret.get_secret_value() if credentials.client_secret else ""
        config |= {
            "client_id": credentials.client_id,
            "client_secret": secret,
            "tenant_id": str(credentials.tenant_id),
        }
        return config, endpoint, "check the tenant id, client id and client secret"
    return config, endpoint, "check the Azure identity the worker runs as and the account URL"


def _emulated(endpoint: str) -> dict[str, str]:
    """delta-rs's options for an emulator's path-style endpoint (``http://host:port/<account>``).

    delta-rs (1.6) reads such an endpoint's listings wrongly unless object_store is in emulator mode
    ("Invalid table version" on the first commit that removes files), and object_store takes an
    emulator's address only from ``AZURITE_BLOB_STORAGE_URL``: it is set here, once per process.
    """
    url = urlsplit(endpoint)
    address = f"{url.scheme}://{url.netloc}"
    current = os.environ.setdefault(EMULATOR_VARIABLE, address)
    if current != address:
        raise FatalError(
            f"{EMULATOR_VARIABLE} is {current}, but this block's emulator is at {address}: a process "
            "writes Delta tables on one Azure emulator only."
        )
    return {"use_emulator": "true"}


def _account_of(endpoint: str) -> str:
    """``https://<account>.blob.core.windows.net``, or ``http://host:port/<account>`` (emulators)."""
    url = urlsplit(endpoint)
    return url.path.strip("/").split("/")[0] or url.netloc.split(".", 1)[0]
