"""The store interface on Google Cloud Storage, through google-cloud-storage (prefect-gcp's client).

Not obstore: its GCS backend uploads through the XML API, which the local servers do not serve
(fake-gcs-server answers 400 ``invalid uploadType``). Conditional writes are generation
preconditions (``ifGenerationMatch=0`` creates only, ``ifGenerationMatch=<n>`` replaces only
generation ``n``), which fake-gcs-server honours. The client retries 408, 429, 5xx and dropped
connections with ``RetryPolicy``'s backoff up to its deadline (passed explicitly: by itself the
library does not retry writes without a precondition).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import requests
from google.api_core import exceptions as api
from google.api_core.retry import Retry
from google.auth import exceptions as auth
from google.cloud.storage import Bucket, Client
from google.cloud.storage.exceptions import InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from tasks.lake.store import Failure, ObjectInfo, Owner, RetryPolicy, Store, Versioned

MiB = 1 << 20
CHUNK_SIZE = 8 * MiB  # above this a resumable upload, one chunk in memory at a time
DELETE_BATCH = 100  # the most calls GCS accepts in one batch request
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class GcsStore(Store):
    """``Store`` on one bucket, under ``root``."""

    def __init__(self, client: Client, bucket: str, root: str, owner: Owner, retry: RetryPolicy) -> None:
        self.client = client
        # a handle without a request: reading the bucket's metadata needs storage.buckets.get
        self.bucket: Bucket = client.bucket(bucket)
        self.root = root.strip("/")
        self.owner = owner
        self.retry = retry
        self.policy: Retry = DEFAULT_RETRY.with_delay(
            initial=retry.initial_backoff, maximum=retry.max_backoff, multiplier=2.0
        ).with_timeout(retry.deadline_seconds)

    def _name(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def describe(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self._name(key)}"

    def _put(self, key: str, data: bytes, create: bool, if_version: str | None) -> str:
        blob = self.bucket.blob(self._name(key))
        generation = 0 if create else int(if_version) if if_version is not None else None
        blob.upload_from_string(data, if_generation_match=generation, retry=self.policy)
        return str(blob.generation)

    def _upload(self, local: Path, key: str) -> None:
        blob = self.bucket.blob(self._name(key), chunk_size=CHUNK_SIZE)
        blob.upload_from_filename(str(local), retry=self.policy)

    def _get(self, key: str) -> Versioned | None:
        blob = self.bucket.blob(self._name(key))
        try:
            data = blob.download_as_bytes(retry=self.policy)
        except api.NotFound as exc:
            if "bucket" in str(exc.message).lower():
                raise
            return None
        return Versioned(data, str(blob.generation))

    def _download(self, key: str, local: Path) -> None:
        self.bucket.blob(self._name(key), chunk_size=CHUNK_SIZE).download_to_filename(
            str(local), retry=self.policy
        )

    def _list(self, folder: str) -> list[ObjectInfo]:
        name = self._name(folder) if folder else (f"{self.root}/" if self.root else None)
        cut = len(self.root) + 1 if self.root else 0
        return [
            ObjectInfo(
                blob.name[cut:], int(blob.size or 0), blob.updated.timestamp() if blob.updated else 0.0
            )
            for blob in self.client.list_blobs(
                self.bucket,
                prefix=name,
                page_size=1000,
                fields="items(name,size,updated),nextPageToken",
                retry=self.policy,
            )
        ]

    def _copy(self, src: str, dst: str) -> None:
        source, target = self.bucket.blob(self._name(src)), self.bucket.blob(self._name(dst))
        token = None
        while True:  # a large object across locations or storage classes takes several calls
            token, _done, _total = target.rewrite(source, token=token, retry=self.policy)
            if token is None:
                return

    def _delete(self, keys: list[str]) -> None:
        names = [self._name(k) for k in keys]
        for start in range(0, len(names), DELETE_BATCH):
            for name in self._delete_batch(names[start : start + DELETE_BATCH]):
                with contextlib.suppress(api.NotFound):
                    self.bucket.delete_blob(name, retry=self.policy)

    def _delete_batch(self, names: list[str]) -> list[str]:
        """One batch request; returns the names still to delete one by one (with retries)."""
        if len(names) == 1:
            return names
        try:
            with self.client.batch(raise_exception=False) as batch:
                for name in names:
                    self.bucket.delete_blob(name)
        except (api.GoogleAPICallError, auth.GoogleAuthError, ValueError):
            return names  # the batch itself failed, or the endpoint does not speak batch
        answers: list[Any] = batch._responses
        redo = []
        for name, answer in zip(names, answers, strict=True):  # one answer per call, in order
            if answer.status_code < 300 or answer.status_code == 404:  # a missing object is fine
                continue
            if answer.status_code not in TRANSIENT_STATUS:
                raise api.from_http_response(answer)
            redo.append(name)
        return redo

    def _classify(self, exc: Exception) -> tuple[str, str] | None:
        if isinstance(exc, api.RetryError):  # the deadline passed: judge by the last error
            cause = exc.cause
            if cause is None or _status(cause) in TRANSIENT_STATUS or _status(cause) == 0:
                return Failure.TRANSIENT, _brief(cause)
            exc = cause
        if isinstance(exc, auth.RefreshError) and getattr(exc, "retryable", False):
            return Failure.TRANSIENT, "the token endpoint kept failing"
        if isinstance(exc, auth.GoogleAuthError) and not isinstance(exc, auth.TransportError):
            return Failure.UNAUTHENTICATED, type(exc).__name__
        if not isinstance(
            exc, api.GoogleAPICallError | InvalidResponse | requests.RequestException | ConnectionError
        ):
            return None
        status = _status(exc)
        if status == 401:
            return Failure.UNAUTHENTICATED, "401"
        if status == 403:
            return Failure.PERMISSION, "403"
        if status == 412:
            return Failure.PRECONDITION, "412"
        if status == 404:
            message = str(getattr(exc, "message", exc)).lower()
            return (Failure.MISSING_BUCKET if "bucket" in message else Failure.NOT_FOUND), "404"
        if status in TRANSIENT_STATUS or status == 0:
            return Failure.TRANSIENT, _brief(exc)
        return Failure.OTHER, _brief(exc)


def _status(exc: BaseException | None) -> int:
    """The HTTP status behind a client error; 0 when there was no HTTP answer."""
    if isinstance(exc, api.GoogleAPICallError):
        return int(exc.code or 0)
    if isinstance(exc, InvalidResponse):
        return int(exc.response.status_code)
    return 0


def _brief(exc: BaseException | None) -> str:
    if isinstance(exc, api.GoogleAPICallError):
        return str(exc.code or type(exc).__name__)
    if isinstance(exc, InvalidResponse):  # uploads and downloads report the bare status
        return str(exc.response.status_code)
    return type(exc).__name__ if exc is not None else "no answer"
