"""Azure Blob Storage destination: Mixpanel's layout in a container, credentials from prefect-azure.

Why the client is built here: prefect-azure's ``AzureBlobStorageCredentials`` (0.4.x) only hands out the
*async* clients of ``azure.storage.blob.aio`` (and async azure-identity credentials), while ``Storage`` and
the commit protocol are synchronous. So we read the same fields of that block (a connection string, or an
account URL with a service principal or the default Azure identity) and build the sync ``ContainerClient``
ourselves, with an explicit ``ExponentialRetry`` policy. Credentials still live only in the Prefect block.

Store quirks handled below:

* Azure has no rename: ``move`` is a server-side copy (``start_copy_from_url``, waited on if pending)
  followed by a delete of the source.
* The lock is a blob created with ``If-None-Match: *`` (``overwrite=False``, 409 BlobAlreadyExists when it
  exists) that stores its holder and an expiry the holder renews. Azure's own blob leases were not chosen:
  they last 15–60 s or forever (a crashed holder's infinite lease needs a manual break), and an expired
  lease cannot be tested in seconds; the conditional create works the same way on every object store.
* A wrong key is ``403 AuthenticationFailed`` on Azure but ``403 AuthorizationFailure`` on Azurite; both
  mean "rejected credentials" when they answer the very first request of ``connect``.
* Accounts with a hierarchical namespace list folders as empty blobs marked ``hdi_isfolder``: skipped.
* Blob batch (``delete_blobs``) is refused by some accounts; deletes then go one by one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobClient, ContainerClient, ExponentialRetry
from prefect_azure import AzureBlobStorageCredentials
from pydantic import Field, field_validator

from blocks.destinations.base import DestinationBlock
from blocks.mixpanel import DOCS_URL
from tasks.errors import (
    BadCredentialsError,
    ConnectionDroppedError,
    FatalError,
    PermissionDeniedError,
    PipelineError,
    RetriableError,
    ServerError,
)
from tasks.objectstore import ObjectStoreDestination
from tasks.storage import ObjectInfo

log = logging.getLogger("mixpanel_pipelines")

BATCH_LIMIT = 256  # sub-requests per blob batch, the service's maximum
AUTH_FAILED = {"AuthenticationFailed", "InvalidAuthenticationInfo"}
CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
COPY_WAIT_SECONDS = 600.0
PROBE = b"mixpanel-pipelines probe"


def _code(exc: HttpResponseError) -> str:
    """The service's error code (``BlobNotFound`` …); the SDK gives a str enum, a str or nothing."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


@dataclass(frozen=True)
class CredentialsLabel:
    """How error messages name the credentials block and what to check in it (never its secrets)."""

    name: str
    fix: str


class AzureBlobStorage:
    """``Storage`` over one container; keys are relative to ``prefix`` inside it."""

    def __init__(
        self,
        container: ContainerClient,
        prefix: str = "",
        *,
        credentials: CredentialsLabel,
        max_concurrency: int = 4,
        list_page_size: int = 5000,
        lock_ttl_seconds: float = 120.0,
        lock_wait_seconds: float = 1800.0,
    ) -> None:
        self.container = container
        self.root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.credentials = credentials
        self.max_concurrency = max_concurrency
        self.list_page_size = list_page_size
        self.lock_ttl_seconds = lock_ttl_seconds
        self.lock_wait_seconds = lock_wait_seconds
        url = urlsplit(container.url)  # a SAS connection string puts its token in the query: drop it
        self.container_url = f"{url.scheme}://{url.netloc}{url.path}"
        self.endpoint = self.container_url.rsplit("/", 1)[0]

    def describe(self, key: str) -> str:
        return f"{self.container_url}/{self.root}{key}"

    def local_path(self, key: str) -> Path | None:
        return None

    def upload(self, local: Path, key: str) -> None:
        # The SDK streams a seekable file in blocks (max_block_size, max_concurrency at a time) and
        # commits the block list at the end, so readers see the old blob or the whole new one.
        with self._errors("write", key), local.open("rb") as stream:
            self.container.upload_blob(
                self._name(key),
                stream,
                length=local.stat().st_size,
                overwrite=True,
                max_concurrency=self.max_concurrency,
            )

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self.container.upload_blob(self._name(key), data, overwrite=True)

    def get_bytes(self, key: str) -> bytes | None:
        with self._errors("read", key):
            try:
                return self.container.download_blob(self._name(key)).readall()
            except ResourceNotFoundError as exc:
                if _code(exc) == "BlobNotFound":
                    return None
                raise

    def list(self, prefix: str) -> list[ObjectInfo]:
        found = []
        with self._errors("list", prefix):
            blobs = self.container.list_blobs(
                name_starts_with=self._name(prefix),
                include=["metadata"],
                results_per_page=self.list_page_size,
            )
            for blob in blobs:  # the pager follows continuation markers page by page
                if (blob.metadata or {}).get("hdi_isfolder") == "true":
                    continue
                found.append(
                    ObjectInfo(blob.name[len(self.root) :], blob.size, blob.last_modified.timestamp())
                )
        return sorted(found, key=lambda info: info.key)

    def move(self, src: str, dst: str) -> None:
        source = self.container.get_blob_client(self._name(src))
        target = self.container.get_blob_client(self._name(dst))
        with self._errors("write", dst):
            copy = target.start_copy_from_url(source.url)
            self._wait_for_copy(target, dst, str(copy.get("copy_status")))
        self.delete([src])

    def delete(self, keys: Iterable[str]) -> None:
        names = [self._name(key) for key in keys]
        for start in range(0, len(names), BATCH_LIMIT):
            self._delete_batch(names[start : start + BATCH_LIMIT])

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        lease = _Lease(self, f"_locks/{name.replace('/', '.')}.lock")
        lease.acquire()
        try:
            yield
        finally:
            lost = lease.release()
        if lost:
            raise RetriableError(
                f"the lock {self.describe(lease.key)} was taken over while this run held it "
                "(its renewals failed): the unit will be committed again."
            )

    def verify(self) -> None:
        """Prove the container exists and the credentials may list, write, read and delete in it."""
        key = f"_probe/{uuid.uuid4().hex}"
        with self._errors("list", key, first_request=True):
            for _ in self.container.list_blobs(name_starts_with=self._name("_probe/"), results_per_page=1):
                break
        self.put_bytes(key, PROBE)
        if self.get_bytes(key) != PROBE or key not in {i.key for i in self.list("_probe/")}:
            raise FatalError(
                f"Azure Blob Storage at {self.endpoint} did not return the probe blob {self.describe(key)} "
                "just written: check that the container is a plain blob container."
            )
        self.delete([key])

    def _name(self, key: str) -> str:
        return self.root + key

    def _wait_for_copy(self, target: BlobClient, key: str, status: str) -> None:
        # Copies inside one account usually finish before the answer ("success"); large ones may be pending.
        deadline = time.monotonic() + COPY_WAIT_SECONDS
        pause = 0.05
        while status == "pending" and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            status = str(target.get_blob_properties().copy.status)
        if status != "success":
            raise RetriableError(
                f"the server-side copy to {self.describe(key)} ended '{status}': the unit will be retried."
            )

    def _delete_batch(self, names: list[str]) -> None:
        with self._errors("delete", names[0][len(self.root) :] if names else ""):
            failed = names
            if len(names) > 1:
                try:
                    results = self.container.delete_blobs(
                        *names, delete_snapshots="include", raise_on_any_failure=False
                    )
                    failed = [
                        n for n, r in zip(names, results, strict=True) if r.status_code not in (202, 404)
                    ]
                except ClientAuthenticationError:
                    raise
                except HttpResponseError:
                    pass  # batch refused (hierarchical namespace, some emulators): one by one below
            # sub-requests of a batch are not retried by the pipeline: the single deletes are
            for name in failed:
                self._delete_one(name)

    def _delete_one(self, name: str) -> None:
        try:
            self.container.delete_blob(name, delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if _code(exc) != "BlobNotFound":
                raise

    @contextmanager
    def _errors(self, action: str, key: str, first_request: bool = False) -> Iterator[None]:
        """Turn what the SDK raises after its retries into the pipeline's error tree."""
        try:
            yield
        except PipelineError:
            raise
        except HttpResponseError as exc:
            raise self._translate(exc, action, key, first_request) from exc
        except AzureError as exc:  # connection refused, reset or timed out on every attempt
            raise ConnectionDroppedError(
                f"Azure Blob Storage at {self.endpoint} could not be reached to {action} "
                f"{self.describe(key)} after the configured retries: the unit will be retried."
            ) from exc

    def _translate(self, exc: HttpResponseError, action: str, key: str, first_request: bool) -> PipelineError:
        status, code = exc.status_code or 0, _code(exc)
        container = self.container.container_name
        if (
            isinstance(exc, ClientAuthenticationError)
            or code in AUTH_FAILED
            or (first_request and status == 403)
        ):
            return BadCredentialsError(
                f"Azure Blob Storage at {self.endpoint} rejected the credentials of "
                f"{self.credentials.name} for container {container}: {self.credentials.fix}."
            )
        if code == "ContainerNotFound":
            return FatalError(
                f"container {container} does not exist at {self.endpoint}: create it or fix the name."
            )
        if status == 403:
            return PermissionDeniedError(
                f"{self.credentials.name} lacks {action} access to container {container} at "
                f"{self.endpoint}: grant it the Storage Blob Data Contributor role or use a key that allows it."
            )
        if status >= 500 or status in (408, 429):
            return ServerError(
                f"Azure Blob Storage at {self.endpoint} kept failing to {action} {self.describe(key)} "
                f"({status} {code}) after the configured retries: the unit will be retried."
            )
        return FatalError(
            f"Azure Blob Storage refused to {action} {self.describe(key)} ({status} {code}): "
            "check the container and the AzureBlobDestination block."
        )


@dataclass(frozen=True)
class _Holder:
    owner: str
    expires: float
    etag: str


class _Lease:
    """A cross-machine lock: a blob created only if absent, holding its owner and an expiry it renews.

    Expiry uses the holder's wall clock and is judged with the waiter's: machines must agree within
    two thirds of the TTL (renewals come every third), which NTP gives by orders of magnitude.
    """

    def __init__(self, storage: AzureBlobStorage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.blob = storage.container.get_blob_client(storage._name(key))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag = ""
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.storage.lock_wait_seconds
        pause = 0.05
        while not self._create():
            holder = self._read()
            if holder is None:
                continue  # released between our create and our read: try again at once
            if holder.owner == self.owner:  # our create landed but its answer was lost and retried
                self.etag = holder.etag
                break
            if holder.expires < time.time():
                self._take_over(holder)
                continue
            if time.monotonic() >= deadline:
                raise FatalError(
                    f"the lock {self.storage.describe(self.key)} is still held by {holder.owner} after "
                    f"{self.storage.lock_wait_seconds:g} s: let that run finish, or delete the blob if no "
                    "run is active."
                )
            time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
            pause = min(pause * 2, 2.0)
        self._renewer = threading.Thread(
            target=self._renew_until_released, name=f"lease {self.key}", daemon=True
        )
        self._renewer.start()

    def release(self) -> bool:
        """Stop renewing and delete the lock blob; returns whether the lease had been lost."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.blob.delete_blob(etag=self.etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            self.lost = True
        except AzureError:
            # releasing must not hide the body's own error; an unreleased lock expires after its TTL
            log.warning("could not release %s: it expires on its own", self.storage.describe(self.key))
        return self.lost

    def _body(self) -> bytes:
        expires = time.time() + self.storage.lock_ttl_seconds
        return json.dumps({"owner": self.owner, "expires": expires}).encode()

    def _create(self) -> bool:
        with self.storage._errors("write", self.key):
            try:
                # overwrite=False sends If-None-Match: * (409 BlobAlreadyExists, 412 on some services)
                result = self.blob.upload_blob(self._body(), overwrite=False)
            except (ResourceExistsError, ResourceModifiedError):
                return False
        self.etag = result["etag"]
        return True

    def _read(self) -> _Holder | None:
        with self.storage._errors("read", self.key):
            try:
                download = self.blob.download_blob()
                data = download.readall()
            except ResourceNotFoundError as exc:
                if _code(exc) == "BlobNotFound":
                    return None
                raise
        try:
            body = json.loads(data)
            return _Holder(str(body["owner"]), float(body["expires"]), download.properties.etag)
        except (ValueError, KeyError, TypeError):  # not ours: expire it as if written at its last change
            written = download.properties.last_modified.timestamp()
            return _Holder(
                "an unknown writer", written + self.storage.lock_ttl_seconds, download.properties.etag
            )

    def _take_over(self, holder: _Holder) -> None:
        with self.storage._errors("delete", self.key):
            try:
                self.blob.delete_blob(etag=holder.etag, match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                return  # renewed, released or taken by another waiter meanwhile: look again
        log.warning("took over the expired lock %s of %s", self.storage.describe(self.key), holder.owner)

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.storage.lock_ttl_seconds / 3):
            try:
                result = self.blob.upload_blob(
                    self._body(),
                    overwrite=True,
                    etag=self.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                self.etag = result["etag"]
            except (ResourceModifiedError, ResourceNotFoundError):
                holder = self._read_quietly()
                if holder is None or holder.owner != self.owner:
                    self.lost = True
                    log.error("lost the lock %s to %s", self.storage.describe(self.key), holder)
                    return
                self.etag = holder.etag  # our renewal landed but its answer was lost and retried
            except AzureError:
                log.warning("could not renew %s; trying again", self.storage.describe(self.key))

    def _read_quietly(self) -> _Holder | None:
        try:
            return self._read()
        except PipelineError:
            return None


class AzureBlobDestination(DestinationBlock):
    """An Azure Blob Storage container that receives Mixpanel's layout:
    <container>/<prefix>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel Azure Blob Destination"
    _block_type_slug = "mixpanel-azure-blob-destination"
    _documentation_url = DOCS_URL
    _description = (
        "An Azure Blob Storage container (and optional folder) that receives the exported tables, "
        "reached through a prefect-azure Azure Blob Storage Credentials block."
    )
    _code_example = """
```python
from blocks.destinations.azure import AzureBlobDestination

destination = AzureBlobDestination.load("BLOCK_NAME")
```
"""

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
        description="Pause before the first retry; later ones grow exponentially (1, 4, 10, 28, 82 s at 1).",
    )
    max_concurrency: int = Field(default=4, ge=1, description="Blocks of one file uploaded in parallel.")
    lock_ttl_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Lifetime of a partition lock unless renewed (a live holder renews it every third of "
        "this): how long a crashed run can block the next commit of its partition.",
    )
    lock_wait_seconds: float = Field(
        default=1800.0,
        ge=0,
        description="How long a commit waits for a partition lock held by another live run before failing.",
    )

    @field_validator("container")
    @classmethod
    def _valid_container(cls, value: str) -> str:
        if not CONTAINER_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a container name: use 3 to 63 lowercase letters, digits and single hyphens."
            )
        return value

    def storage(
        self, client_options: Mapping[str, Any] | None = None, **storage_options: Any
    ) -> AzureBlobStorage:
        """The ``Storage`` for this container; options reach the SDK client and ``AzureBlobStorage``."""
        container = _container_client(self.credentials, self.container, self._retry_policy(), client_options)
        return AzureBlobStorage(
            container,
            self.prefix,
            credentials=_label(self.credentials),
            **({"max_concurrency": self.max_concurrency} | self._lock_options() | storage_options),
        )

    def connect(self, project_id: int) -> ObjectStoreDestination:
        storage = self.storage()
        storage.verify()
        return ObjectStoreDestination(storage, project_id)

    def _lock_options(self) -> dict[str, float]:
        return {"lock_ttl_seconds": self.lock_ttl_seconds, "lock_wait_seconds": self.lock_wait_seconds}

    def _retry_policy(self) -> ExponentialRetry:
        # ExponentialRetry waits initial_backoff, then initial_backoff + increment_base ** n (± jitter):
        # scaling the base with sub-second backoffs keeps test pauses short; from 1 s up it is the SDK's 3.
        backoff = self.retry_backoff_seconds
        total = self.retry_total
        return ExponentialRetry(
            initial_backoff=backoff,  # type: ignore[arg-type]
            increment_base=3 * min(backoff, 1.0),  # type: ignore[arg-type]
            random_jitter_range=min(backoff, 3.0),  # type: ignore[arg-type]
            retry_total=total,
            retry_connect=total,
            retry_read=total,
            retry_status=total,
        )


def _label(credentials: AzureBlobStorageCredentials) -> CredentialsLabel:
    saved = getattr(credentials, "_block_document_name", None)
    name = f"block '{saved}'" if saved else "the AzureBlobStorageCredentials block"
    if credentials.connection_string is not None:
        return CredentialsLabel(name, "check the account key or connection string")
    if credentials.client_id is not None:
        return CredentialsLabel(name, "check the tenant id, client id and client secret")
    return CredentialsLabel(name, "check the Azure identity the worker runs as and the account URL")


def _container_client(
    credentials: AzureBlobStorageCredentials,
    container: str,
    retry_policy: ExponentialRetry,
    client_options: Mapping[str, Any] | None,
) -> ContainerClient:
    options = {"retry_policy": retry_policy, **(client_options or {})}
    if credentials.connection_string is not None:
        try:
            return ContainerClient.from_connection_string(
                credentials.connection_string.get_secret_value(), container, **options
            )
        except ValueError as exc:
            raise BadCredentialsError(
                f"the connection string of {_label(credentials).name} is malformed: copy it again from the "
                "storage account's Access keys page."
            ) from exc
    if credentials.client_id is not None:
        from azure.identity import ClientSecretCredential

        secret = credentials.client_secret.get_secret_value() if credentials.client_secret else ""
        token = ClientSecretCredential(str(credentials.tenant_id), credentials.client_id, secret)
        return ContainerClient(str(credentials.account_url), container, credential=token, **options)
    from azure.identity import DefaultAzureCredential

    return ContainerClient(
        str(credentials.account_url), container, credential=DefaultAzureCredential(), **options
    )
