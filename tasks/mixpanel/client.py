"""HTTP access to Mixpanel's export API: streamed bodies, error classification, whole-unit retries.

Bodies are read raw (``iter_raw``) and inflated here, never by httpx: the client asks for gzip only,
and an answer in any other ``Content-Encoding`` (zstd, deflate, br, ...: a proxy re-encoding) is
refused unread. Gzip is inflated at most ``INFLATE_STEP_BYTES`` per step, member after member
(stacked members are one body), one gzip layer per ``gzip`` the header declares, so memory holds one
step of inflated bytes beyond what the consumer holds, and the inflation guard sees every step.
Inflating is ISA-L's (``isal``, zlib's interface and checks, about twice zlib's speed: the export's
reading thread spends its time here), the GIL released while it runs; it is fed ``INFLATE_INPUT_BYTES``
at a time, gathered from the socket's reads of 64 KiB, as each call waits to take the GIL back.
Every error leaving a request has this client's secrets masked (``tasks.errors.redact``), whatever
body or header it quotes.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar, cast

import httpx
from isal import isal_zlib

from tasks.errors import (
    BadCredentialsError,
    BadRequestError,
    ConnectionDroppedError,
    FatalError,
    InflatedBodyError,
    PermissionDeniedError,
    PipelineError,
    PlanError,
    RateLimitedError,
    RetriableError,
    ServerError,
    TimezoneSettingError,
    TruncatedStreamError,
    UnrequestedEncodingError,
    mask_known,
    redact,
    secret_forms,
)
from tasks.mixpanel.ratelimit import RateBudget, Window
from tasks.mixpanel.settings import ApiSettings

log = logging.getLogger("mixpanel_pipelines")
T = TypeVar("T")
MAX_BACKOFF_SECONDS = 300.0
RETRY_AFTER_JITTER = 0.2  # fraction of the server's named wait added at most, as jitter
MAX_RETRY_AFTER_JITTER_SECONDS = 5.0
# a gzipped answer may inflate this much before its ratio is checked (small answers compress well)
INFLATION_FLOOR_BYTES = 64 << 20
# inflated bytes handed on per step: a bomb never holds more than this at once
INFLATE_STEP_BYTES = 1 << 20
# compressed bytes gathered for one inflate call: each call releases the GIL and then waits to take it
# back behind the parsing thread, so a few large calls read faster than one per 64 KiB socket read
INFLATE_INPUT_BYTES = 512 << 10
# an error answer is quoted in 300 characters: more of it is never read
ERROR_BODY_BYTES = 64 << 10
# what the client asks for (Accept-Encoding: gzip) and so all it reads; x-gzip is gzip (RFC 9110)
GZIP_CODINGS = frozenset({"gzip", "x-gzip"})
GZIP_WBITS = isal_zlib.MAX_WBITS | 16  # a gzip member: header and CRC checked
# isal's stubs type its error as an instance; it is the class a corrupt stream raises
INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)


class Body(Iterator[bytes]):
    """A response's body as it arrives (``body_chunks``), read by whichever thread iterates it;
    ``interrupt()``, from another thread, wakes a read blocked on the socket (it then ends in an error
    the interrupter expects), so a reader thread never outlives a unit that stopped waiting for it."""

    def __init__(self, chunks: Iterator[bytes], response: httpx.Response) -> None:
        self._chunks = chunks
        self._response = response

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def interrupt(self) -> None:
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RD)


@dataclass(frozen=True)
class ExportRequest:
    """One call of the Raw Event Export API (both dates inclusive, in the project's calendar)."""

    from_date: date
    to_date: date
    events: tuple[str, ...] = ()
    where: str | None = None

    def params(self, project_id: int | None) -> dict[str, str]:
        params = {"from_date": self.from_date.isoformat(), "to_date": self.to_date.isoformat()}
        if project_id is not None:
            params["project_id"] = str(project_id)
        if self.events:
            params["event"] = json.dumps(list(self.events))
        if self.where:
            params["where"] = self.where
        return params


def error_message(body: str, known: Iterable[str] = ()) -> str:
    """Mixpanel error bodies are JSON ``{"error": ...}`` or plain text; keep the first 300 chars,
    credentials masked (a proxy's page may echo the request's headers)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return redact(body.strip(), known)[:300]
    if isinstance(parsed, dict) and "error" in parsed:
        return redact(str(parsed["error"]), known)[:300]
    return redact(body.strip(), known)[:300]


def retry_after_seconds(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """The server's ``Retry-After``: delay-seconds or an HTTP date (RFC 9110); None if absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def classify_response(
    status: int, body: str, retry_after: float | None = None, known: Iterable[str] = ()
) -> Exception:
    """Map a non-200 export answer to the error tree, with a one-sentence cause and fix."""
    detail = error_message(body, known)
    if status == 429:
        return RateLimitedError(f"Mixpanel rate-limited the export ({detail}); retrying.", retry_after)
    if status >= 500:
        return ServerError(f"Mixpanel answered {status} ({detail}); retrying.", retry_after)
    if status == 401 or (status == 400 and "authenticate" in detail.lower()):
        return BadCredentialsError(
            "Mixpanel rejected the credentials: check the service account username, secret and project_id "
            "in the MixpanelCredentials block."
        )
    if status == 402:
        return PlanError(
            "Mixpanel answered 402 Payment Required: this project's plan has no access to this API; "
            "upgrade the plan or ask Mixpanel support to enable it."
        )
    if status == 403:
        return PermissionDeniedError(
            f"Mixpanel answered 403 ({detail}): give the service account a role on this project "
            "(Organization Settings > Service Accounts)."
        )
    if status == 400 and "later than today" in detail.lower():
        return TimezoneSettingError(
            f"Mixpanel refused the dates ({detail}): check the project timezone setting (time_mode and "
            "project_timezone in the MixpanelCredentials block must match the project's settings)."
        )
    return BadRequestError(f"Mixpanel answered {status} ({detail}): fix the request parameters.")


@dataclass
class RetryStats:
    attempts: int = 0
    retries: int = 0
    reasons: list[str] = field(default_factory=list)


def backoff_seconds(attempt: int, base: float, retry_after: float | None, rng: random.Random) -> float:
    """The pause before attempt ``attempt + 1``. When the server named its wait (``Retry-After``),
    that wait plus a little jitter (up to 20 % of it, at least 0.2 s and at most 5 s, so concurrent
    requests do not all come back in the same instant); otherwise exponential backoff with jitter
    (``base`` doubling per attempt, capped at ``MAX_BACKOFF_SECONDS``)."""
    if retry_after is not None:
        spread = min(RETRY_AFTER_JITTER * max(retry_after, 1.0), MAX_RETRY_AFTER_JITTER_SECONDS)
        return retry_after + rng.uniform(0.0, spread)
    ceiling = min(base * (2 ** (attempt - 1)), MAX_BACKOFF_SECONDS)
    return rng.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0


class MixpanelClient:
    """Export client for one project: one shared rate budget, one retry policy."""

    def __init__(
        self,
        settings: ApiSettings,
        budget: RateBudget | None = None,
        query_budget: RateBudget | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        notify: Callable[[str], None] | None = None,
        export_gate: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.settings = settings
        self.notify = notify or log.warning
        # held around each export request besides the host's budget: the flows pass the Prefect
        # global concurrency limits here, which hold the budget across workers on many machines
        self.export_gate = export_gate or nullcontext
        # Set on the first HTTP answer of any request: callers fanning out wait for it, so bad
        # credentials cost one request and one clear error, not one per concurrent unit.
        self.answered = threading.Event()
        self.fatal: FatalError | None = None
        self.budget = budget or RateBudget(
            key=f"export:{settings.project_id}",
            windows=[
                Window(settings.tuning.export_requests_per_second, 1.0),
                Window(settings.tuning.export_requests_per_hour, 3600.0),
            ],
            max_concurrent=settings.tuning.export_max_concurrent,
        )
        self.query_budget = query_budget or RateBudget(
            key=f"query:{settings.project_id}",
            windows=[Window(settings.tuning.query_requests_per_hour, 3600.0)],
            max_concurrent=settings.tuning.query_max_concurrent,
        )
        self._sleep = sleep
        self._rng = random.Random()
        user, password = settings.auth
        # a legacy project secret travels as the Basic username
        self._secrets = secret_forms(
            [password, user] if not settings.uses_service_account else [password], (user, password)
        )
        timeout = httpx.Timeout(
            connect=settings.tuning.connect_timeout_seconds,
            read=settings.tuning.read_timeout_seconds,
            write=60.0,
            pool=60.0,
        )
        limits = httpx.Limits(
            max_connections=settings.tuning.export_max_concurrent + settings.tuning.query_max_concurrent
        )
        # headers and a POST body may leave in two writes: TCP_NODELAY keeps Nagle's algorithm from
        # holding the second until the server's delayed ACK (tens of ms per small request)
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        self._http = httpx.Client(
            auth=settings.auth,
            timeout=timeout,
            transport=transport or httpx.HTTPTransport(limits=limits, socket_options=nodelay),
            headers={"Accept-Encoding": "gzip", "User-Agent": "mixpanel-pipelines/0.1"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MixpanelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _project_param(self) -> dict[str, str]:
        # service accounts must name the project; a legacy project secret implies it
        return {"project_id": str(self.settings.project_id)} if self.settings.uses_service_account else {}

    def export(self, request: ExportRequest) -> AbstractContextManager[Body]:
        """Open one export request; its decompressed body as byte chunks (export budget held)."""
        params = request.params(None) | self._project_param()
        return self._stream(self.budget, "GET", self.settings.export_url, self.export_gate, params=params)

    def engage(self, form: dict[str, str]) -> AbstractContextManager[Body]:
        """Open one Engage (profiles) page request (query-API budget held)."""
        url = f"{self.settings.query_base_url}/api/query/engage"
        return self._stream(
            self.query_budget, "POST", url, nullcontext, params=self._project_param(), data=form
        )

    def event_counts(self, from_date: date, to_date: date, names: list[str]) -> dict[str, dict[str, int]]:
        """Mixpanel's per-day counts of ``names`` (query API, deduplicated, project calendar):
        ``{name: {"YYYY-MM-DD": count}}``, one request, retried whole."""
        params = self._project_param() | {
            "event": json.dumps(names),
            "type": "general",
            "unit": "day",
            "from_date": from_date.isoformat(),
            "to_date": to_date.isoformat(),
        }
        url = f"{self.settings.query_base_url}/api/query/events"

        def attempt() -> dict[str, dict[str, int]]:
            with self._stream(self.query_budget, "GET", url, nullcontext, params=params) as chunks:
                body = b"".join(chunks)
            try:
                values = json.loads(body)["data"]["values"]
                return {str(n): {str(d): int(c) for d, c in days.items()} for n, days in values.items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ServerError(
                    f"Mixpanel's event counts answer was not understood ({exc}); retrying."
                ) from exc

        return self.with_retries(attempt, f"event counts {from_date}..{to_date}")

    @contextmanager
    def _stream(
        self,
        budget: RateBudget,
        method: str,
        url: str,
        gate: Callable[[], AbstractContextManager[object]],
        **kwargs: Any,
    ) -> Iterator[Body]:
        """Transport failures while streaming surface as ``RetriableError``; HTTP errors as the
        classified error. The request holds ``gate`` and one slot of ``budget`` while it streams."""
        with (
            masked(self._secrets),
            gate(),
            budget.slot(on_wait=self._budget_wait),
            _transport_errors(),
            self._http.stream(method, url, **kwargs) as response,
        ):
            refused = unrequested_coding(response.headers)
            if response.status_code != 200:
                body = read_body(response, self.settings.tuning.max_inflation_ratio, ERROR_BODY_BYTES)
                error = classify_response(
                    response.status_code,
                    f"(a body in {refused} encoding, not read)"
                    if refused
                    else body.decode("utf-8", "replace"),
                    retry_after_seconds(response.headers),
                    self._secrets,
                )
            elif refused:
                error = unrequested_error(refused)
            else:
                self.answered.set()
                yield Body(body_chunks(response, self.settings.tuning.max_inflation_ratio), response)
                return
            if isinstance(error, FatalError):
                self.fatal = error
            self.answered.set()
            raise error

    def _budget_wait(self, seconds: float, reason: str) -> None:
        if seconds >= 1:
            self.notify(f"waiting {seconds:.0f} s for this host's Mixpanel budget: {reason}")

    def wait_for_first_answer(self, done: Callable[[], bool], poll_seconds: float = 0.2) -> None:
        """Block until some request got an HTTP answer or ``done()`` says the first unit ended."""
        while not self.answered.wait(poll_seconds):
            if done():
                return

    def with_retries(self, unit: Callable[[], T], what: str, stats: RetryStats | None = None) -> T:
        """Run ``unit`` until it succeeds, retrying the whole unit on ``RetriableError``."""
        return with_retries(
            unit,
            what,
            self.settings,
            "the previous data is unchanged, run again later or raise max_attempts.",
            notify=self.notify,
            sleep=self._sleep,
            rng=self._rng,
            stats=stats,
        )


def with_retries(
    unit: Callable[[], T],
    what: str,
    settings: ApiSettings,
    when_exhausted: str,
    notify: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    stats: RetryStats | None = None,
) -> T:
    """Run ``unit`` up to ``settings.tuning.max_attempts`` times, pausing with jittered backoff after each
    ``RetriableError``; the last one is raised with ``when_exhausted`` (what state is left, what to do)."""
    stats = stats if stats is not None else RetryStats()
    rng = rng or random.Random()
    attempts = settings.tuning.max_attempts
    for attempt in range(1, attempts + 1):
        stats.attempts = attempt
        try:
            return unit()
        except RetriableError as exc:
            if attempt == attempts:
                raise RetriableError(
                    f"{what} failed {attempts} times, last: {exc}; {when_exhausted}", exc.retry_after
                ) from exc
            pause = backoff_seconds(attempt, settings.tuning.retry_backoff_seconds, exc.retry_after, rng)
            stats.retries += 1
            stats.reasons.append(type(exc).__name__)
            notify(f"{what}: attempt {attempt}/{attempts} failed ({exc}); retrying in {pause:.1f} s")
            sleep(pause)
    raise AssertionError("unreachable")


@contextmanager
def _transport_errors() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ConnectionDroppedError(
            f"Mixpanel did not answer in time ({type(exc).__name__}); retrying."
        ) from exc
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ConnectionDroppedError(
            f"the connection to Mixpanel broke ({type(exc).__name__}: {exc})."
        ) from exc


def content_codings(headers: httpx.Headers) -> list[str]:
    """The codings of the body, in the order they were applied (RFC 9110 8.4), identity left out."""
    codings = (c.strip().lower() for c in headers.get_list("content-encoding", split_commas=True))
    return [c for c in codings if c and c != "identity"]


def unrequested_coding(headers: httpx.Headers) -> str | None:
    """The first coding of the body that is not gzip, if any: it is not read."""
    return next((c for c in content_codings(headers) if c not in GZIP_CODINGS), None)


def unrequested_error(coding: str) -> UnrequestedEncodingError:
    return UnrequestedEncodingError(
        f"Mixpanel's answer came in Content-Encoding {coding!r}, which the pipeline does not ask for "
        "(it asks for gzip) and did not read: a proxy between this worker and Mixpanel re-encodes "
        "answers, let it pass gzip through unchanged."
    )


def body_chunks(response: httpx.Response, max_ratio: float) -> Iterator[bytes]:
    """The body as it arrives, each declared gzip layer inflated in bounded steps; a body inflating
    beyond ``max_ratio`` times the bytes received (once ``INFLATION_FLOOR_BYTES`` are out) is a
    decompression bomb: fatal, never retried. Call only when ``unrequested_coding`` is None."""
    try:
        # an answer built in memory (a mock transport) was read, and decoded by httpx, when created
        yield response.content
        return
    except httpx.ResponseNotRead:
        pass
    chunks: Iterator[bytes] = response.iter_raw()
    layers = content_codings(response.headers)
    for _ in layers:
        chunks = gunzip(chunks)
    inflated = 0
    with _transport_errors():
        for chunk in chunks:
            inflated += len(chunk)
            received = max(response.num_bytes_downloaded, 1)
            if layers and inflated > INFLATION_FLOOR_BYTES and inflated > max_ratio * received:
                raise InflatedBodyError(
                    f"Mixpanel's answer inflated to more than {inflated >> 20} MiB from {received:,} bytes "
                    f"received (more than max_inflation_ratio={max_ratio:g}): treated as a decompression "
                    "bomb and not retried; the previous data is unchanged, check the proxy in front of "
                    "Mixpanel or raise max_inflation_ratio."
                )
            yield chunk


def read_body(response: httpx.Response, max_ratio: float, limit: int) -> bytes:
    """At most ``limit`` bytes of the body (inflated as ``body_chunks`` does); nothing of a body in
    an encoding the client did not ask for."""
    if unrequested_coding(response.headers):
        return b""
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in body_chunks(response, max_ratio):
            parts.append(chunk[: limit - size])
            size += len(parts[-1])
            if size >= limit:
                break
    except RetriableError:
        pass  # a cut or corrupt body: its start is all an error answer needs
    return b"".join(parts)


def gunzip(chunks: Iterable[bytes], step: int = INFLATE_STEP_BYTES) -> Iterator[bytes]:
    """Inflate a gzip stream of one or more members (concatenated members are one body, RFC 1952),
    at most ``step`` bytes per yield. Zero padding after a member is ignored, as gzip(1) does; a
    stream ending inside a member was cut short (retriable); a corrupt one is retriable too."""
    inflater = isal_zlib.decompressobj(GZIP_WBITS)
    inside = False  # bytes of the current member were fed
    try:
        for data in map(b"".join, byte_batches(chunks, INFLATE_INPUT_BYTES)):
            while data:
                if inflater.eof:  # a member ended: what follows is the next member, or padding
                    if not data.strip(b"\0"):
                        break
                    inflater = isal_zlib.decompressobj(GZIP_WBITS)
                inside = True
                out = inflater.decompress(data, step)
                data = inflater.unconsumed_tail or inflater.unused_data
                if out:
                    yield out
                # output held back inside the inflater (a long match past ``step``): drain it in steps
                while len(out) == step and not inflater.unconsumed_tail:
                    out = inflater.decompress(b"", step)
                    if out:
                        yield out
                if inflater.eof:
                    inside = False
        if inside and not inflater.eof:
            raise TruncatedStreamError(
                "Mixpanel's gzip answer ended inside a gzip member (the connection was cut short); retrying."
            )
    except INFLATE_ERROR as exc:
        raise ConnectionDroppedError(f"Mixpanel's gzip answer is corrupt ({exc}); retrying.") from exc


def byte_batches(chunks: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """``chunks`` in lists of at least ``size`` bytes (the last may hold fewer), none left out."""
    batch: list[bytes] = []
    held = 0
    for chunk in chunks:
        batch.append(chunk)
        held += len(chunk)
        if held >= size:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


@contextmanager
def masked(known: Iterable[str]) -> Iterator[None]:
    """Every error leaving a request (the client's or its consumer's: a parser quoting the body) has
    the client's own secrets masked; only those, as the sentences are ours and quotes were redacted."""
    try:
        yield
    except PipelineError as exc:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (mask_known(exc.args[0], known), *exc.args[1:])
        raise


# Mixpanel's counts query takes a list of names: a few requests cover hundreds of names
NAMES_PER_COUNT_REQUEST = 100


def mixpanel_counts(
    client: MixpanelClient, days: list[date], names: Iterable[str]
) -> dict[date, Counter[str]]:
    """Mixpanel's deduplicated count per day and event name, in few query-API requests; a name appears
    for a day only when the answer gives a number for it."""
    listed = sorted(set(names))
    out = {day: Counter[str]() for day in days}
    if not days or not listed:
        return out
    for start in range(0, len(listed), NAMES_PER_COUNT_REQUEST):
        chunk = listed[start : start + NAMES_PER_COUNT_REQUEST]
        for name, per_day in client.event_counts(min(days), max(days), chunk).items():
            for day in days:
                # a name the answer gives no number for that day stays absent, not 0: silence is no count
                if day.isoformat() in per_day:
                    out[day][name] += per_day[day.isoformat()]
    return out
