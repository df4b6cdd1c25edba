"""Google Cloud Storage as a destination, through prefect-gcp's ``GcsBucket`` block.

The service account key lives only in the referenced ``GcsBucket`` / ``GcpCredentials`` blocks; this
module asks the credentials for their google-cloud-storage client and passes an explicit retry
policy to every call (the library retries non-idempotent writes only when told to). GCS quirks
handled here:

* the client reaches ``storage.googleapis.com``, or the emulator named by ``STORAGE_EMULATOR_HOST``;
* ``GcsBucket.get_bucket()`` reads the bucket's metadata, which needs ``storage.buckets.get``: a
  service account limited to objects (``roles/storage.objectAdmin``) lacks it, so the bucket handle
  is built without a request and the connect check lists objects instead;
* there is no rename: ``move`` is a server-side rewrite (resumed with its token for large objects)
  followed by a delete of the source;
* uploads up to 8 MiB go in one multipart request; larger files go as a resumable upload streamed
  from disk in chunks (the object appears only when the last chunk lands);
* deletes go 100 to a batch request; a batch answer carries one status per object, and an endpoint
  that does not speak batch (some emulators) gets one delete per object;
* the lock is a conditional create (``ifGenerationMatch=0``, 412 when the object exists); a retried
  create whose first attempt landed sees its own lock and 412: the token tells. Some emulators
  ignore generation preconditions: the connect check detects it and the lock falls back to
  check, create, wait and read back, which leaves a short race (documented on ``Lease``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.cloud.storage import Blob, Bucket, Client
from google.cloud.storage.exceptions import InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY
from prefect_gcp import GcsBucket
from pydantic import Field

from blocks.destinations.base import DestinationBlock
from blocks.mixpanel import DOCS_URL
from tasks.errors import (
    BadCredentialsError,
    ConnectionDroppedError,
    FatalError,
    PermissionDeniedError,
    PipelineError,
    ServerError,
)
from tasks.objectstore import ObjectStoreDestination
from tasks.storage import ObjectInfo

log = logging.getLogger(__name__)

MiB = 1 << 20
CHUNK_SIZE = 8 * MiB  # resumable chunks: a multiple of 256 KiB; one chunk is held in memory at a time
PAGE_SIZE = 1000  # the most objects one list page returns
DELETE_BATCH = 100  # the most calls GCS accepts in one batch request
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
CLOCK_SKEW_SECONDS = 5.0  # a lease counts as expired only this long after its holder's stated expiry
SETTLE_SECONDS = 0.5  # fallback lock: how long a fresh create waits for a rival's overwrite to show
LOCK_POLL_MAX_SECONDS = 5.0


class GcsDestination(DestinationBlock):
    """A GCS bucket that receives Mixpanel's layout: <prefix>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel GCS Destination"
    _block_type_slug = "mixpanel-gcs-destination"
    _documentation_url = DOCS_URL
    _description = (
        "A Google Cloud Storage bucket that receives the exported tables; the service account key stays "
        "in the referenced prefect-gcp GcsBucket block."
    )
    _code_example = """
```python
from blocks.destinations.gcs import GcsDestination

destination = GcsDestination.load("BLOCK_NAME")
```
"""

    bucket: GcsBucket = Field(
        default=...,
        description="The prefect-gcp GcsBucket block: bucket name, folder and its GcpCredentials block "
        "(a service account with roles/storage.objectAdmin on the bucket).",
    )
    prefix: str = Field(
        default="",
        description="Folder inside the bucket (below the GcsBucket block's bucket_folder) that receives "
        "the tables; empty for the top of the bucket.",
    )
    retry_deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long one Cloud Storage call is retried on throttling, 5xx answers and dropped "
        "connections (exponential backoff with jitter) before the unit of work fails.",
    )
    lock_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a commit lock stays valid without renewal; the holder renews it while it "
        "runs, so a crashed run blocks others at most this long.",
    )
    lock_wait_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="How long a run waits for a commit lock held by another run before failing.",
    )

    def connect(self, project_id: int) -> ObjectStoreDestination:
        storage = GcsStorage(
            self.bucket,
            self.prefix,
            retry_deadline_seconds=self.retry_deadline_seconds,
            lease_seconds=self.lock_lease_seconds,
            wait_seconds=self.lock_wait_seconds,
        )
        storage.probe()
        return ObjectStoreDestination(storage, project_id)


def gcs_retry(deadline_seconds: float) -> Retry:
    """The library's predicate (429, 408, 5xx, dropped connections, token transport errors) with our
    deadline; passed explicitly because the library retries writes only under preconditions."""
    return DEFAULT_RETRY.with_delay(initial=1.0, maximum=32.0, multiplier=2.0).with_timeout(deadline_seconds)


@dataclass(frozen=True)
class LockState:
    fields: dict[str, str]
    generation: int


class GcsStorage:
    """The ``Storage`` protocol on one bucket, under ``<bucket_folder>/<prefix>``."""

    def __init__(
        self,
        bucket: GcsBucket,
        prefix: str = "",
        *,
        retry_deadline_seconds: float = 120.0,
        lease_seconds: float = 60.0,
        wait_seconds: float = 1800.0,
        chunk_size: int = CHUNK_SIZE,
        page_size: int = PAGE_SIZE,
        clock_skew_seconds: float = CLOCK_SKEW_SECONDS,
        delete_batch: int = DELETE_BATCH,
    ) -> None:
        self.bucket_name = bucket.bucket
        self.root = "/".join(p.strip("/") for p in (bucket.bucket_folder, prefix) if p.strip("/"))
        self.retry_deadline_seconds = retry_deadline_seconds
        self.retry = gcs_retry(retry_deadline_seconds)
        try:
            self.client: Client = bucket.gcp_credentials.get_cloud_storage_client()
        except auth_exceptions.DefaultCredentialsError as exc:  # no key in the block and no ambient identity
            raise BadCredentialsError(
                f"no Google Cloud credentials were found for {_owner(bucket)}: set a service account key "
                "in its GcpCredentials block or run the worker as a service account."
            ) from exc
        # google-cloud-storage 3.x fetches each bucket's metadata (storage.buckets.get) in a background
        # thread to label tracing spans; we do not trace, and that permission is often not granted
        if getattr(self.client, "_bucket_metadata_cache", None) is not None:
            self.client._bucket_metadata_cache = None
        # a handle without a request: GcsBucket.get_bucket() would need storage.buckets.get
        self.bucket: Bucket = self.client.bucket(self.bucket_name)
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.chunk_size = chunk_size
        self.page_size = page_size
        self.clock_skew_seconds = clock_skew_seconds
        self.delete_batch = delete_batch
        self.conditional_writes = True  # the connect check finds out; GCS itself always honours them
        self.owner = _owner(bucket)
        email = getattr(self.client._credentials, "service_account_email", None)
        self.principal = f"the service account {email}" if email else f"the identity of {self.owner}"

    # keys -------------------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def _relative(self, full: str) -> str:
        return full[len(self.root) + 1 :] if self.root else full

    def describe(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{self.full_key(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    def _blob(self, key: str, **kwargs: Any) -> Blob:
        return self.bucket.blob(self.full_key(key), **kwargs)

    # objects ----------------------------------------------------------------------------------

    def upload(self, local: Path, key: str) -> None:
        # above 8 MiB the library switches to a resumable upload that reads chunk_size at a time and
        # resumes from the last chunk the server confirmed after a transient error
        blob = self._blob(key, chunk_size=self.chunk_size)
        with self._errors("storage.objects.create", key):
            blob.upload_from_filename(str(local), retry=self.retry)

    def put_bytes(self, key: str, data: bytes) -> None:
        # one request: readers see the old object or the new one; a retry rewrites the same bytes
        with self._errors("storage.objects.create", key):
            self._blob(key).upload_from_string(data, retry=self.retry)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            with self._errors("storage.objects.get", key, passthrough=(api_exceptions.NotFound,)):
                return self._blob(key).download_as_bytes(retry=self.retry)
        except api_exceptions.NotFound:
            return None

    def list(self, prefix: str) -> list[ObjectInfo]:
        # LocalStorage lists a folder: "a/b" must not match "a/bc", so the prefix ends with "/"
        folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        found = []
        with self._errors("storage.objects.list", folder):  # pages are fetched while iterating
            blobs = self.client.list_blobs(
                self.bucket,
                prefix=self.full_key(folder) if self.root or folder else None,
                page_size=self.page_size,
                fields="items(name,size,updated),nextPageToken",
                retry=self.retry,
            )
            for blob in blobs:
                modified = blob.updated.timestamp() if blob.updated else 0.0
                found.append(ObjectInfo(self._relative(blob.name), int(blob.size or 0), modified))
        return sorted(found, key=lambda info: info.key)

    def move(self, src: str, dst: str) -> None:
        source, target = self._blob(src), self._blob(dst)
        try:
            with self._errors(
                "storage.objects.get and storage.objects.create", dst, passthrough=(api_exceptions.NotFound,)
            ):
                token = None
                while True:  # a large object across locations or storage classes takes several calls
                    token, _done, _total = target.rewrite(source, token=token, retry=self.retry)
                    if token is None:
                        break
        except api_exceptions.NotFound as exc:
            if not self._exists(dst):  # a repeated move whose first attempt finished is done
                raise FatalError(
                    f"{self.describe(src)} does not exist, so it cannot be moved to {self.describe(dst)}: "
                    "re-run the unit to stage it again."
                ) from exc
        self.delete([src])

    def _exists(self, key: str) -> bool:
        with self._errors("storage.objects.get", key):
            return self._blob(key).exists(retry=self.retry)

    def delete(self, keys: Iterable[str]) -> None:
        names = sorted({self.full_key(k) for k in keys})
        for start in range(0, len(names), self.delete_batch):
            for name in self._delete_batch(names[start : start + self.delete_batch]):
                self._delete_one(name)

    def _delete_batch(self, names: list[str]) -> list[str]:
        """One batch request; returns the names still to delete one by one (with retries)."""
        if len(names) == 1:
            return names
        try:
            with self.client.batch(raise_exception=False) as batch:
                for name in names:
                    self.bucket.delete_blob(name)
        except (api_exceptions.GoogleAPICallError, auth_exceptions.GoogleAuthError, ValueError) as exc:
            # the batch call itself failed (or came back not multipart): single deletes are idempotent
            log.debug("batch delete of %d objects failed (%s): deleting one by one", len(names), exc)
            return names
        retry_names = []
        for name, answer in zip(names, batch._responses, strict=True):  # one answer per call, in order
            if answer.status_code < 300 or answer.status_code == 404:  # a missing object is fine
                continue
            if answer.status_code in TRANSIENT_STATUS:
                retry_names.append(name)
                continue
            error = api_exceptions.from_http_response(answer)
            raise self._translate(error, "storage.objects.delete", self._relative(name)) from error
        return retry_names

    def _delete_one(self, name: str, generation: int | None = None) -> bool:
        """Delete ``name`` (only that generation, if given); False when it was missing or changed."""
        key = self._relative(name)
        expected = (api_exceptions.NotFound, api_exceptions.PreconditionFailed)
        try:
            with self._errors("storage.objects.delete", key, passthrough=expected):
                self.bucket.delete_blob(name, if_generation_match=generation, retry=self.retry)
        except expected:
            return False
        return True

    # the lock's primitives ----------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        lease = Lease(self, f"_locks/{name.replace('/', '.')}.lock")
        lease.acquire()
        try:
            yield
        finally:
            lease.release()

    def write_if_generation(self, key: str, fields: dict[str, str], generation: int) -> int | None:
        """Write ``key`` only if its generation is ``generation`` (0: only if it does not exist);
        returns the new generation, None when the precondition failed."""
        blob = self._blob(key)
        blob.metadata = fields  # read back in one metadata GET, with the generation
        body = json.dumps(fields).encode()
        try:
            with self._errors(
                "storage.objects.create", key, passthrough=(api_exceptions.PreconditionFailed,)
            ):
                blob.upload_from_string(
                    body, content_type="application/json", if_generation_match=generation, retry=self.retry
                )
        except api_exceptions.PreconditionFailed:
            return None
        return int(blob.generation or 0)

    def read_lock(self, key: str) -> LockState | None:
        with self._errors("storage.objects.get", key):
            blob = self.bucket.get_blob(self.full_key(key), retry=self.retry)
        if blob is None:
            return None
        return LockState(dict(blob.metadata or {}), int(blob.generation or 0))

    def delete_if_generation(self, key: str, generation: int) -> bool:
        return self._delete_one(self.full_key(key), generation)

    # the connect check ------------------------------------------------------------------------

    def probe(self) -> None:
        """Bucket exists, and we can write, read, list and delete; detects ignored preconditions."""
        key = f"_probe/{uuid.uuid4().hex}"
        with self._errors("storage.objects.list", "_probe/"):
            probe_folder = self.full_key("_probe/")
            list(self.client.list_blobs(self.bucket, prefix=probe_folder, max_results=1, retry=self.retry))
        fields = {"probe": "1"}
        if self.write_if_generation(key, fields, 0) is None:
            raise FatalError(f"{self.describe(key)} already existed: check the store.")
        try:
            if self.write_if_generation(key, fields, 0) is not None:
                self.conditional_writes = False
                log.warning(
                    "the Cloud Storage endpoint of %s ignores generation preconditions (an emulator?): "
                    "the commit lock falls back to create-and-read-back, which is not race-free",
                    self.owner,
                )
            if self.get_bytes(key) != json.dumps(fields).encode():
                raise FatalError(f"{self.describe(key)} did not read back what was written: check the store.")
            if key not in {i.key for i in self.list("_probe/")}:
                raise FatalError(f"{self.describe(key)} is missing from the bucket listing: check the store.")
        finally:
            self.delete([key])

    # errors -----------------------------------------------------------------------------------

    @contextmanager
    def _errors(
        self, permission: str, key: str, passthrough: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """Turn what the client raises once its retries are spent into our error tree.

        Exceptions in ``passthrough`` are expected answers the caller handles: re-raised as they are.
        """
        try:
            yield
        except passthrough:
            raise
        except PipelineError:
            raise
        except (
            api_exceptions.GoogleAPICallError,
            api_exceptions.RetryError,
            auth_exceptions.GoogleAuthError,
            InvalidResponse,
            requests.RequestException,
            ConnectionError,
        ) as exc:
            raise self._translate(exc, permission, key) from exc

    def _translate(self, exc: Exception, permission: str, key: str) -> Exception:
        if isinstance(exc, api_exceptions.RetryError):  # the deadline passed: judge by the last error
            cause = exc.cause
            if cause is None or _status(cause) in TRANSIENT_STATUS or _status(cause) == 0:
                return ServerError(
                    f"Google Cloud Storage kept failing ({_brief(cause)}) on {self.describe(key)} for "
                    f"{self.retry_deadline_seconds:g} s: the unit will be retried."
                )
            exc = cause
        if isinstance(exc, auth_exceptions.RefreshError) and getattr(exc, "retryable", False):
            return ServerError(  # google-auth already retried the token endpoint's 5xx answers
                f"Google's token endpoint kept failing for {self.owner}: the unit will be retried."
            )
        if isinstance(exc, auth_exceptions.RefreshError) or _status(exc) == 401:
            return BadCredentialsError(
                f"Google Cloud Storage rejected the credentials of {self.owner}: check the service "
                "account key in its GcpCredentials block."
            )
        if isinstance(exc, auth_exceptions.GoogleAuthError) and not isinstance(
            exc, auth_exceptions.TransportError
        ):
            return BadCredentialsError(
                f"the credentials of {self.owner} are not usable ({type(exc).__name__}): check the "
                "service account key in its GcpCredentials block."
            )
        status = _status(exc)
        if status == 403:
            return PermissionDeniedError(
                f"{self.principal} lacks {permission} on bucket {self.bucket_name}: grant it "
                "roles/storage.objectAdmin on the bucket."
            )
        if status == 404:
            return FatalError(
                f"bucket {self.bucket_name} does not exist: create it or fix the name in {self.owner}."
            )
        if status in TRANSIENT_STATUS:
            return ServerError(
                f"Google Cloud Storage answered {status} on {self.describe(key)}: the unit will be retried."
            )
        if status == 0:  # no HTTP answer: connection refused, reset or timed out
            return ConnectionDroppedError(
                f"Google Cloud Storage stayed unreachable ({type(exc).__name__}) on {self.describe(key)}: "
                "the unit will be retried."
            )
        return FatalError(
            f"Google Cloud Storage refused {permission} on {self.describe(key)} ({_brief(exc)})."
        )


def _owner(bucket: GcsBucket) -> str:
    name = getattr(bucket, "_block_document_name", None)
    return (
        f"GcsBucket block '{name}' (bucket {bucket.bucket})"
        if name
        else f"the GcsBucket block of bucket {bucket.bucket}"
    )


def _status(exc: BaseException | None) -> int:
    """The HTTP status behind a client error; 0 when there was no HTTP answer."""
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return int(exc.code or 0)
    if isinstance(exc, InvalidResponse):
        return int(exc.response.status_code)
    return 0


def _brief(exc: BaseException | None) -> str:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"{exc.code} {exc.message}".strip()
    if isinstance(exc, InvalidResponse):  # uploads and downloads report the bare status
        return str(exc.response.status_code)
    return type(exc).__name__ if exc is not None else "no answer"


class Lease:
    """A cross-machine lock: a conditionally created object, renewed while held, taken over once expired.

    The object (its metadata, and its body for people) holds a token, the holder and an expiry by the
    holder's clock; a waiter takes over only ``clock_skew_seconds`` after that expiry. Renewals and
    the takeover's delete name the generation they saw, so a run never removes a newer holder's lock.

    On a store that ignores generation preconditions (detected by the connect check: emulators), the
    create cannot fail, so an attempt first checks the lock is absent, creates it, waits
    ``SETTLE_SECONDS`` and reads it back: the token that reads back wins. The race left: two runs
    that both saw the lock absent and whose creates land more than ``SETTLE_SECONDS`` apart both
    win; and a takeover's delete cannot name the generation there.
    """

    def __init__(self, storage: GcsStorage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.token = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.generation = 0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _fields(self) -> dict[str, str]:
        expires = time.time() + self.storage.lease_seconds
        return {
            "token": self.token,
            "holder": self.holder,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
            "expires_epoch": f"{expires:.3f}",
        }

    def acquire(self) -> None:
        deadline = time.monotonic() + self.storage.wait_seconds
        delay = 0.05
        while (state := self._attempt()) != "held":
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out()
            if state == "again":  # the lock vanished or we removed an expired one: try at once
                continue
            if delay == 0.05:
                log.info("waiting for the lock %s", self.storage.describe(self.key))
            time.sleep(min(delay, left))
            delay = min(delay * 2, LOCK_POLL_MAX_SECONDS)  # each poll costs a write and a read
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._renewer.start()

    def _attempt(self) -> str:
        careful = not self.storage.conditional_writes
        if careful and (current := self.storage.read_lock(self.key)) is not None:
            return self._judge(current)
        generation = self.storage.write_if_generation(self.key, self._fields(), 0)
        if generation is not None and not careful:
            self.generation = generation
            return "held"
        if careful:
            time.sleep(SETTLE_SECONDS)  # a rival that also saw no lock has written by now
        current = self.storage.read_lock(self.key)
        return "again" if current is None else self._judge(current)

    def _judge(self, current: LockState) -> str:
        if current.fields.get("token") == self.token:  # ours: a create whose answer was lost, or read back
            self.generation = current.generation
            return "held"
        expires = float(current.fields.get("expires_epoch", "0") or 0)
        if time.time() > expires + self.storage.clock_skew_seconds:
            log.warning(
                "taking over the expired lock %s of %s", self.storage.describe(self.key), current.fields
            )
            self.storage.delete_if_generation(self.key, current.generation)  # only that version
            return "again"
        return "wait"

    def _renew(self) -> None:
        while not self._stop.wait(self.storage.lease_seconds / 3):
            try:
                generation = self.storage.write_if_generation(self.key, self._fields(), self.generation)
            except PipelineError as exc:  # retries spent: keep trying while the lease may still be valid
                log.warning("could not renew the lock %s: %s", self.storage.describe(self.key), exc)
                continue
            if generation is None:
                log.error("lost the lock %s: another run took it over", self.storage.describe(self.key))
                return
            self.generation = generation

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if not self.storage.delete_if_generation(self.key, self.generation):
            log.warning("the lock %s was no longer ours at release", self.storage.describe(self.key))

    def _timed_out(self) -> FatalError:
        current = self.storage.read_lock(self.key)
        holder = current.fields.get("holder", "an unknown run") if current else "a run that just left"
        where = self.storage.describe(self.key)
        return FatalError(
            f"waited {self.storage.wait_seconds:g} s for the lock {where} held by {holder}: if no run is "
            f"active, delete that object (gcloud storage rm {where}) and start again."
        )
