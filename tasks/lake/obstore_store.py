"""The store interface on obstore (Rust ``object_store``): S3 and Azure Blob Storage.

Proven here on moto 5.2 and Azurite 3.35: a second ``put(mode="create")`` is refused with
``AlreadyExistsError``, ``put(mode={"e_tag": current})`` succeeds and a stale one is refused with
``PreconditionError``. obstore retries 5xx answers, throttling and dropped connections itself, with
the backoff of ``RetryPolicy``; what is left after the retries comes here and is classified by the
exception's type and the service's error code in its message.
"""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore import exceptions as ob

from tasks.lake.store import Failure, ObjectInfo, Owner, RetryPolicy, Store, Versioned

if TYPE_CHECKING:  # obstore's typed dicts exist in its stubs only
    from obstore.store import RetryConfig

MiB = 1 << 20
DELETE_BATCH = 1000
CODE = re.compile(r"<Code>(\w+)</Code>")
STATUS = re.compile(r"status code: (\d{3})")
CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AuthenticationFailed",
    "AuthorizationFailure",
    "InvalidAuthenticationInfo",
}
MISSING_BUCKET_CODES = {"NoSuchBucket", "ContainerNotFound"}
PERMISSION_CODES = {"AccessDenied", "AllAccessDisabled", "AuthorizationPermissionMismatch"}
THROTTLING_CODES = {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "ServerBusy"}


def retry_config(policy: RetryPolicy) -> RetryConfig:
    return {
        "max_retries": policy.max_attempts - 1,
        "backoff": {
            "init_backoff": timedelta(seconds=policy.initial_backoff),
            "max_backoff": timedelta(seconds=policy.max_backoff),
            "base": 2,
        },
        "retry_timeout": timedelta(seconds=policy.deadline_seconds),
    }


class ObstoreStore(Store):
    """``Store`` over an obstore store whose own ``prefix`` is the destination root."""

    def __init__(self, store: Any, url: str, owner: Owner, retry: RetryPolicy) -> None:
        self.store = store
        self.url = url.rstrip("/")  # s3://bucket/root, https://account.blob…/container/root
        self.owner = owner
        self.retry = retry

    def describe(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _put(self, key: str, data: bytes, create: bool, if_version: str | None) -> str:
        mode: Any = "create" if create else {"e_tag": if_version} if if_version is not None else None
        return str(obstore.put(self.store, key, data, mode=mode, use_multipart=False)["e_tag"])

    def _upload(self, local: Path, key: str) -> None:
        # above one chunk: a multipart upload streamed from disk, 2 parts in flight (32 MiB of buffers:
        # peak RSS as with boto3, no slower on moto); the object appears on completion
        obstore.put(self.store, key, local, chunk_size=16 * MiB, max_concurrency=2)

    def _get(self, key: str) -> Versioned | None:
        try:
            got = obstore.get(self.store, key)
            data = bytes(got.bytes())
        except FileNotFoundError:
            return None
        return Versioned(data, str(got.meta["e_tag"]))

    def _download(self, key: str, local: Path) -> None:
        with local.open("wb") as out:
            for chunk in obstore.get(self.store, key).stream(min_chunk_size=8 * MiB):
                out.write(chunk)

    def _list(self, folder: str) -> list[ObjectInfo]:
        return [
            ObjectInfo(item["path"], int(item["size"]), item["last_modified"].timestamp())
            for batch in obstore.list(self.store, prefix=folder or None, chunk_size=1000)
            for item in batch
        ]

    def _copy(self, src: str, dst: str) -> None:
        obstore.copy(self.store, src, dst)

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                obstore.delete(self.store, batch)
            except FileNotFoundError:  # Azure refuses a batch naming a missing blob: one by one
                for key in batch:
                    with contextlib.suppress(FileNotFoundError):
                        obstore.delete(self.store, key)

    def _classify(self, exc: Exception) -> tuple[str, str] | None:
        if not isinstance(exc, ob.BaseError | FileNotFoundError):
            return None
        text = str(exc)
        code_match, status_match = CODE.search(text), STATUS.search(text)
        code = code_match.group(1) if code_match else ""
        status = int(status_match.group(1)) if status_match else 0
        detail = code or (f"HTTP {status}" if status else type(exc).__name__)
        if isinstance(exc, ob.UnauthenticatedError) or code in CREDENTIAL_CODES:
            return Failure.UNAUTHENTICATED, detail
        if code in MISSING_BUCKET_CODES:
            return Failure.MISSING_BUCKET, detail
        if isinstance(exc, ob.PermissionDeniedError) or code in PERMISSION_CODES:
            return Failure.PERMISSION, detail
        if isinstance(exc, ob.AlreadyExistsError | ob.PreconditionError):
            return Failure.PRECONDITION, detail
        if isinstance(exc, FileNotFoundError):
            return Failure.NOT_FOUND, detail
        if status >= 500 or status in (408, 429) or code in THROTTLING_CODES:
            return Failure.TRANSIENT, detail
        if not status and ("retries" in text or "error sending request" in text or "connect" in text.lower()):
            return Failure.TRANSIENT, "connection failed"
        return Failure.OTHER, detail
