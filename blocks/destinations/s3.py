"""Amazon S3 (or an S3-compatible store) as a destination, through prefect-aws's ``S3Bucket`` block.

Credentials, region and a custom ``endpoint_url`` live only in the referenced ``S3Bucket`` /
``AwsCredentials`` blocks; this module asks them for their boto3 client, adding an explicit retry
policy. S3 quirks handled here:

* there is no rename: ``move`` is a server-side copy (multipart above 5 GB, done by boto3's managed
  copy) followed by a delete of the source;
* ``DeleteObjects`` answers 200 even when some keys failed: the per-key ``Errors`` are checked;
* listings come 1000 keys a page at most: the paginator is followed;
* a HEAD answers 403/404 without an error code, so the connect check lists instead;
* the lock is a conditional create (``If-None-Match: *``, 412 when the key exists); a retried
  create whose first attempt landed sees its own lock and 412: the token in the body tells.
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
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from prefect_aws import S3Bucket
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

MAX_ATTEMPTS = 8  # in all, the first included; botocore "standard" mode: exponential backoff with jitter, 5xx/throttling/dropped
DELETE_BATCH = 1000  # the most keys DeleteObjects takes at once
MiB = 1 << 20
# parts of 16 MiB stream from disk, 4 at a time: 64 MiB of buffers at most, files up to 160 GB
TRANSFER = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4)
CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
}
PERMISSION_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"}
THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable"}
# 412 when the condition fails; 409 when a concurrent conditional write to the same key won the race
PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
MISSING_KEY_CODES = {"NoSuchKey", "404"}


class S3Destination(DestinationBlock):
    """An S3 bucket that receives Mixpanel's layout: <prefix>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel S3 Destination"
    _block_type_slug = "mixpanel-s3-destination"
    _documentation_url = DOCS_URL
    _description = (
        "An Amazon S3 bucket (or an S3-compatible store) that receives the exported tables; credentials "
        "stay in the referenced prefect-aws S3Bucket block."
    )
    _code_example = """
```python
from blocks.destinations.s3 import S3Destination

destination = S3Destination.load("BLOCK_NAME")
```
"""

    bucket: S3Bucket = Field(
        default=...,
        description="The prefect-aws S3Bucket block: bucket name, folder and its AwsCredentials block "
        "(set endpoint_url in its client parameters for an S3-compatible store).",
    )
    prefix: str = Field(
        default="",
        description="Folder inside the bucket (below the S3Bucket block's bucket_folder) that receives "
        "the tables; empty for the top of the bucket.",
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
        storage = S3Storage(
            self.bucket,
            self.prefix,
            lease_seconds=self.lock_lease_seconds,
            wait_seconds=self.lock_wait_seconds,
        )
        storage.probe()
        return ObjectStoreDestination(storage, project_id)


def s3_client(bucket: S3Bucket, max_attempts: int = MAX_ATTEMPTS) -> Any:
    """The client of the block's credentials (endpoint, region, TLS settings kept) with our retry policy.

    A ``retries`` setting the operator put in the block's botocore config wins over ours.
    """
    credentials = bucket.credentials
    params = credentials.aws_client_parameters
    config = {"retries": {"mode": "standard", "total_max_attempts": max_attempts}, **(params.config or {})}
    tuned = credentials.model_copy(
        update={"aws_client_parameters": params.model_copy(update={"config": config})}
    )
    return tuned.get_s3_client()  # cached by prefect-aws per credentials: one thread-safe client


class S3Storage:
    """The ``Storage`` protocol on one bucket, under ``<bucket_folder>/<prefix>``."""

    def __init__(
        self,
        bucket: S3Bucket,
        prefix: str = "",
        *,
        max_attempts: int = MAX_ATTEMPTS,
        lease_seconds: float = 60.0,
        wait_seconds: float = 1800.0,
        page_size: int = 1000,
        delete_batch: int = DELETE_BATCH,
        transfer: TransferConfig = TRANSFER,
    ) -> None:
        self.bucket = bucket.bucket_name
        self.root = "/".join(p.strip("/") for p in (bucket.bucket_folder, prefix) if p.strip("/"))
        self.max_attempts = max_attempts
        self.client = s3_client(bucket, max_attempts)
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.page_size = page_size
        self.delete_batch = delete_batch
        self.transfer = transfer
        name = getattr(bucket, "_block_document_name", None)
        self.owner = (
            f"S3Bucket block '{name}' (bucket {self.bucket})"
            if name
            else f"the S3Bucket block for bucket {self.bucket}"
        )

    # keys -------------------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def _relative(self, full: str) -> str:
        return full[len(self.root) + 1 :] if self.root else full

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    # objects ----------------------------------------------------------------------------------

    def upload(self, local: Path, key: str) -> None:
        # boto3 streams the file in parts above the threshold; the object appears only on completion
        with self._errors("s3:PutObject", key):
            self.client.upload_file(str(local), self.bucket, self.full_key(key), Config=self.transfer)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("s3:PutObject", key):  # one PUT: readers see the old object or the new one
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data)

    def put_if(self, key: str, data: bytes, **condition: str) -> str | None:
        """A conditional PUT (``IfNoneMatch="*"`` or ``IfMatch=etag``): the new ETag, None if it failed."""
        try:
            with self._errors("s3:PutObject", key, passthrough=PRECONDITION_CODES):
                done = self.client.put_object(
                    Bucket=self.bucket, Key=self.full_key(key), Body=data, **condition
                )
        except ClientError:
            return None
        return done["ETag"]

    def get_bytes(self, key: str) -> bytes | None:
        found = self.get_object(key)
        return found.body if found else None

    def get_object(self, key: str) -> StoredObject | None:
        """The object with its ETag and age by the server's clock; None when missing."""
        try:
            with self._errors("s3:GetObject", key, passthrough=MISSING_KEY_CODES):
                got = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
                body = got["Body"].read()
        except ClientError:
            return None
        server_now = got["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = parsedate_to_datetime(server_now).timestamp() if server_now else time.time()
        return StoredObject(body, got["ETag"], now - got["LastModified"].timestamp())

    def list(self, prefix: str) -> list[ObjectInfo]:
        # LocalStorage lists a folder: "a/b" must not match "a/bc", so the prefix ends with "/"
        folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.full_key(folder),
            PaginationConfig={"PageSize": self.page_size},
        )
        found = []
        with self._errors("s3:ListBucket", folder):  # the pages are fetched while iterating
            for page in pages:
                for item in page.get("Contents", []):
                    modified = item["LastModified"].timestamp()
                    found.append(ObjectInfo(self._relative(item["Key"]), item["Size"], modified))
        return sorted(found, key=lambda info: info.key)

    def move(self, src: str, dst: str) -> None:
        source = {"Bucket": self.bucket, "Key": self.full_key(src)}
        with self._errors("s3:GetObject and s3:PutObject", dst):
            self.client.copy(source, self.bucket, self.full_key(dst), Config=self.transfer)
        with self._errors("s3:DeleteObject", src):
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(src))

    def delete(self, keys: Iterable[str]) -> None:
        unique = sorted({self.full_key(k) for k in keys})
        for start in range(0, len(unique), self.delete_batch):
            batch = [{"Key": k} for k in unique[start : start + self.delete_batch]]
            with self._errors("s3:DeleteObject", self._relative(batch[0]["Key"])):
                done = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            # a 200 answer may still carry per-key failures; a missing key is not one of them
            for error in done.get("Errors", []):
                fake = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 200}}
                failed = self._relative(error["Key"])
                raise self._translate(ClientError(fake, "DeleteObjects"), "s3:DeleteObject", failed)

    def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete ``key`` only if it is still the version ``etag``; False when it changed or is gone."""
        expected = PRECONDITION_CODES | MISSING_KEY_CODES | {"NotImplemented"}
        try:
            with self._errors("s3:DeleteObject", key, passthrough=expected):
                self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key), IfMatch=etag)
        except ClientError as exc:
            if _code(exc) != "NotImplemented":
                return False
            # a store without conditional deletes (S3 has them since 2025-09): read, compare, delete
            current = self.get_object(key)
            if current is None or current.etag != etag:
                return False
            self.delete([key])
        return True

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        lease = Lease(self, f"_locks/{name.replace('/', '.')}.lock")
        lease.acquire()
        try:
            yield
        finally:
            lease.release()

    # the connect check ------------------------------------------------------------------------

    def probe(self) -> None:
        """Bucket exists, and we can write, read, list and delete; conditional writes are honoured."""
        key = f"_probe/{uuid.uuid4().hex}"
        with self._errors("s3:ListBucket", "_probe/"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.full_key("_probe/"), MaxKeys=1)
        self.put_bytes(key, b"probe")
        try:
            if self.put_if(key, b"probe", IfNoneMatch="*") is not None:
                raise FatalError(
                    f"the S3 endpoint of {self.owner} ignores conditional writes (If-None-Match) on "
                    f"bucket {self.bucket}, which the commit lock needs: use a store that supports them."
                )
            if self.get_bytes(key) != b"probe":
                raise FatalError(f"{self.describe(key)} did not read back what was written: check the store.")
            if key not in {i.key for i in self.list("_probe/")}:
                raise FatalError(f"{self.describe(key)} is missing from the bucket listing: check the store.")
        finally:
            self.delete([key])

    # errors -----------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, key: str, passthrough: AbstractSet[str] = frozenset()) -> Iterator[None]:
        """Turn what botocore raises once its retries are spent into our error tree.

        Codes in ``passthrough`` are expected answers the caller handles: re-raised as they are.
        """
        try:
            yield
        except S3UploadFailedError as exc:  # boto3 wraps the ClientError of a managed upload
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                raise self._translate(cause, action, key) from exc
            raise ConnectionDroppedError(f"uploading {self.describe(key)} failed: {exc}") from exc
        except ClientError as exc:
            if _code(exc) in passthrough:
                raise
            raise self._translate(exc, action, key) from exc
        except NoCredentialsError as exc:
            raise BadCredentialsError(
                f"no AWS credentials were found for {self.owner}: set an access key in its "
                "AwsCredentials block or give the worker an IAM role."
            ) from exc
        except (HTTPClientError, BotoConnectionError) as exc:
            raise ConnectionDroppedError(
                f"S3 stayed unreachable for {action} on {self.describe(key)} after {self.max_attempts} "
                "attempts: the unit will be retried."
            ) from exc
        except BotoCoreError as exc:
            raise FatalError(f"S3 {action} on {self.describe(key)} failed: {exc}.") from exc

    def _translate(self, exc: ClientError, action: str, key: str) -> Exception:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in CREDENTIAL_CODES:
            return BadCredentialsError(
                f"S3 rejected the credentials of {self.owner} ({code}): check the access key ID and "
                "secret access key in its AwsCredentials block."
            )
        if code == "NoSuchBucket":
            return FatalError(
                f"S3 bucket {self.bucket} does not exist: create it or fix the name in {self.owner}."
            )
        if code in PERMISSION_CODES:
            return PermissionDeniedError(
                f"the identity of {self.owner} lacks {action} on bucket {self.bucket}: grant it in "
                "its IAM policy."
            )
        if status >= 500 or code in THROTTLING_CODES:
            return ServerError(
                f"S3 kept answering {code} to {action} on {self.describe(key)}: the unit will be retried."
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return FatalError(f"S3 refused {action} on {self.describe(key)} ({code}: {message}).")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    etag: str
    age_seconds: float  # since the last write, by the server's clock (no client clock skew)


class Lease:
    """A cross-machine lock: a conditionally created object, renewed while held, taken over once expired.

    The object holds its token, holder and lease length. Expiry is judged by the server's clock
    (its ``Date`` minus the object's ``LastModified``), so clocks of workers never matter.
    """

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.token = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.etag = ""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        lease = self.storage.lease_seconds
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + lease))
        fields = {"token": self.token, "holder": self.holder, "lease_seconds": lease, "expires_at": expires}
        return json.dumps(fields).encode()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.storage.wait_seconds
        delay, waiting = 0.05, False
        while (state := self._attempt()) != "held":
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out()
            if state == "again":  # the lock vanished or we removed an expired one: try at once
                continue
            if not waiting:
                log.info("waiting for the lock %s", self.storage.describe(self.key))
                waiting = True
            time.sleep(min(delay, left))
            # polls cost a PUT and a GET: back off to one per 5 s, or per half lease if shorter
            delay = min(delay * 2, 5.0, max(self.storage.lease_seconds / 2, 0.05))
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._renewer.start()

    def _attempt(self) -> str:
        etag = self.storage.put_if(self.key, self._body(), IfNoneMatch="*")
        if etag is not None:
            self.etag = etag
            return "held"
        current = self.storage.get_object(self.key)
        if current is None:
            return "again"
        info = _parse(current.body)
        if info.get("token") == self.token:  # our create landed, its answer was lost, the retry saw it
            self.etag = current.etag
            return "held"
        # Date and Last-Modified count whole seconds: one second of slack keeps a renewed lease safe
        if current.age_seconds > float(info.get("lease_seconds", self.storage.lease_seconds)) + 1:
            log.warning("taking over the expired lock %s of %s", self.storage.describe(self.key), info)
            self.storage.delete_if_match(self.key, current.etag)  # only that version: never a new holder's
            return "again"
        return "wait"

    def _renew(self) -> None:
        while not self._stop.wait(self.storage.lease_seconds / 3):
            try:
                etag = self.storage.put_if(self.key, self._body(), IfMatch=self.etag)
            except PipelineError as exc:  # retries spent: keep trying while the lease may still be valid
                log.warning("could not renew the lock %s: %s", self.storage.describe(self.key), exc)
                continue
            if etag is None:
                log.error("lost the lock %s: another run took it over", self.storage.describe(self.key))
                return
            self.etag = etag

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if not self.storage.delete_if_match(self.key, self.etag):
            log.warning("the lock %s was no longer ours at release", self.storage.describe(self.key))

    def _timed_out(self) -> FatalError:
        current = self.storage.get_object(self.key)
        holder = _parse(current.body).get("holder", "an unknown run") if current else "a run that just left"
        where = self.storage.describe(self.key)
        return FatalError(
            f"waited {self.storage.wait_seconds:g} s for the lock {where} held by {holder}: if no run is "
            f"active, delete that object (aws s3 rm {where}) and start again."
        )


def _parse(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
