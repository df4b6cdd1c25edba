"""Mixpanel's GDPR data-deletion API: submit deletions, read a task's status.

The API wants the project *token* as a query parameter and a separate OAuth token as Bearer (not
the export's service account); it takes at most 1999 ids per request and 1 request per second.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from tasks.errors import (
    BadCredentialsError,
    BadRequestError,
    ConnectionDroppedError,
    RateLimitedError,
    ServerError,
    redact,
    secret_forms,
)
from tasks.mixpanel.client import (
    ERROR_BODY_BYTES,
    error_message,
    masked,
    read_body,
    retry_after_seconds,
    unrequested_coding,
    unrequested_error,
    with_retries,
)
from tasks.mixpanel.ratelimit import RateBudget, Window
from tasks.mixpanel.settings import ApiSettings, GdprSettings

MAX_IDS_PER_REQUEST = 1999
# a task id and a status: an answer longer than this is not Mixpanel's (it fails as not JSON)
MAX_ANSWER_BYTES = 1 << 20
PATH = "/api/app/data-deletions/v3.0/"


class RedactSecrets(logging.Filter):
    """httpx logs every request URL at INFO, and the GDPR API takes the project token in the URL
    (``?token=``; the API documents no other place for it): the token is masked in those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


_REDACT = RedactSecrets()


def hide_tokens_in_http_logs() -> None:
    """Install the filter on httpx's loggers (once; idempotent)."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


def batches(ids: list[str], size: int = MAX_IDS_PER_REQUEST) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def task_id_of(payload: Any) -> str:
    """``results.task_id``; some API versions answer a list of task objects with ``tracking_id``."""
    results = payload.get("results") if isinstance(payload, dict) else None
    if isinstance(results, dict) and results.get("task_id"):
        return str(results["task_id"])
    tasks = results if isinstance(results, list) else payload if isinstance(payload, list) else []
    for item in tasks:
        if isinstance(item, dict) and (item.get("tracking_id") or item.get("task_id")):
            return str(item.get("tracking_id") or item.get("task_id"))
    raise ServerError("Mixpanel's GDPR answer carried no task id; retrying.")


def status_of(payload: Any) -> str:
    results = payload.get("results") if isinstance(payload, dict) else None
    status = results.get("status") if isinstance(results, dict) else None
    return str(status or "UNKNOWN").upper()


def classify(status: int, body: str, retry_after: float | None, known: tuple[str, ...] = ()) -> Exception:
    detail = error_message(body, known)
    if status == 429:
        return RateLimitedError(
            f"Mixpanel rate-limited the GDPR API ({detail}); retrying.", retry_after or 1.0
        )
    if status >= 500:
        return ServerError(f"Mixpanel's GDPR API answered {status} ({detail}); retrying.", retry_after)
    if status == 401:
        return BadCredentialsError(
            "Mixpanel rejected the GDPR OAuth token: renew it (it is valid for one year) and save it in the "
            "MixpanelGdprCredentials block."
        )
    if status == 403:
        return BadCredentialsError(
            f"Mixpanel refused the GDPR request ({detail}): check the project token in the "
            "MixpanelGdprCredentials block."
        )
    if status == 404:
        return BadRequestError(f"Mixpanel does not know this deletion task ({detail}).")
    return BadRequestError(f"Mixpanel's GDPR API answered {status} ({detail}): fix the request.")


# Mixpanel's documented limit for the GDPR API; the budget adds its arrival slack to it.
GDPR_REQUESTS_PER_SECOND = 1


class GdprClient:
    def __init__(
        self,
        settings: ApiSettings,
        gdpr: GdprSettings,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        notify: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.notify = notify
        self._sleep = sleep
        self._token = gdpr.project_token
        self._secrets = secret_forms([gdpr.project_token, gdpr.oauth_token])
        hide_tokens_in_http_logs()
        # one request per 1.5 s in effect: the budget's slack keeps a request that leaves on time but
        # arrives late (a busy host, the network) from arriving within a second of the next one
        self.budget = RateBudget(
            key=f"gdpr:{settings.project_id}",
            windows=[Window(GDPR_REQUESTS_PER_SECOND, 1.0)],
            max_concurrent=1,
        )
        self._http = httpx.Client(
            base_url=settings.query_base_url,
            timeout=httpx.Timeout(60.0, connect=settings.tuning.connect_timeout_seconds),
            # gzip only: httpx would otherwise ask for (and inflate whole) zstd and deflate too
            headers={"Authorization": f"Bearer {gdpr.oauth_token}", "Accept-Encoding": "gzip"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GdprClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, ids: list[str], compliance_type: str) -> str:
        """One deletion request (≤ 1999 ids); Mixpanel's task id."""
        if not 0 < len(ids) <= MAX_IDS_PER_REQUEST:
            raise BadRequestError(f"a GDPR request takes 1 to {MAX_IDS_PER_REQUEST} ids, not {len(ids)}")
        body = {"distinct_ids": ids, "compliance_type": compliance_type}
        return task_id_of(self._call("POST", PATH, json=body))

    def status(self, task_id: str) -> str:
        return status_of(self._call("GET", f"{PATH}{task_id}"))

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return with_retries(
            lambda: self._once(method, path, **kwargs),
            "Mixpanel's GDPR API",
            self.settings,
            "the registry keeps the request, the next run tries again.",
            notify=self.notify,
            sleep=self._sleep,
        )

    def _once(self, method: str, path: str, **kwargs: Any) -> Any:
        with masked(self._secrets), self.budget.slot():
            try:
                with self._http.stream(method, path, params={"token": self._token}, **kwargs) as response:
                    limit = MAX_ANSWER_BYTES if response.status_code == 200 else ERROR_BODY_BYTES
                    body = read_body(response, self.settings.tuning.max_inflation_ratio, limit)
                    refused = unrequested_coding(response.headers)
            except httpx.TransportError as exc:
                raise ConnectionDroppedError(
                    f"the connection to Mixpanel broke ({type(exc).__name__})."
                ) from exc
            if response.status_code != 200:
                text = (
                    f"(a body in {refused} encoding, not read)"
                    if refused
                    else body.decode("utf-8", "replace")
                )
                raise classify(
                    response.status_code, text, retry_after_seconds(response.headers), self._secrets
                )
            if refused:
                raise unrequested_error(refused)
            try:
                return json.loads(body)
            except ValueError as exc:
                raise ServerError(
                    "Mixpanel's GDPR API answered something that is not JSON; retrying."
                ) from exc
