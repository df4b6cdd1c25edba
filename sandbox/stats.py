"""Request statistics and Mixpanel's per-project export rate limits."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from typing import Any, NamedTuple

from sandbox.config import ProjectConfig

LOG_LIMIT = 10_000


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Largest number of timestamps inside any half-open sliding window of `window` seconds."""
    ordered = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class EndpointStats:
    """Thread-safe counters of one endpoint; tests use them to check a client's rate budget."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.max_concurrent = 0
        self.rate_limited = 0
        self.bytes_served = 0
        self.responses: Counter[int] = Counter()
        self.request_times: list[float] = []
        self.log: list[dict[str, Any]] = []

    def begin(self) -> float:
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            self.request_times.append(now)
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)
        return now

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def response(self, status: int, entry: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.responses[status] += 1
            if status == 429:
                self.rate_limited += 1
            if entry is not None and len(self.log) < LOG_LIMIT:
                self.log.append({**entry, "status": status})

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "max_concurrent": self.max_concurrent,
                "rate_limited": self.rate_limited,
                "bytes_served": self.bytes_served,
                "responses": {str(k): v for k, v in sorted(self.responses.items())},
                "request_times": list(self.request_times),
                "log": list(self.log),
            }

    def snapshot(self) -> dict[str, Any]:
        """The counters as `<prefix>_*` keys."""
        return {f"{self.prefix}_{k}": v for k, v in self.counters().items()}


class Stats(EndpointStats):
    """The export endpoint's counters (unprefixed keys, plus ``export_requests`` and the busiest second),
    the Engage endpoint's as ``engage_*``, the query API counts' as ``counts_*`` and the GDPR API's as
    ``gdpr_*``."""

    def __init__(self) -> None:
        super().__init__("export")
        self._fresh_endpoints()

    def _fresh_endpoints(self) -> None:
        # Swapped whole on reset: a request in progress keeps counting into the old object.
        self.engage = EndpointStats("engage")
        self.counts = EndpointStats("counts")
        self.gdpr = EndpointStats("gdpr")

    def reset(self) -> None:
        with self._lock:
            self._clear()
            self._fresh_endpoints()

    @property
    def export_requests(self) -> int:
        return self.requests

    def snapshot(self) -> dict[str, Any]:
        values = self.counters()
        return {
            "export_requests": values.pop("requests"),
            **values,
            "max_in_any_second": max_in_window(values["request_times"]),
            **self.engage.snapshot(),
            **self.counts.snapshot(),
            **self.gdpr.snapshot(),
        }


class RateLimiter:
    """Mixpanel export limits per project: N/second, N/hour (sliding windows) and N concurrent."""

    def __init__(self, cfg: ProjectConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        # The query API (Engage) has its own budget; it lives here so SandboxState.reset() clears it too.
        self.query = QueryLimiter(cfg)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._starts: deque[float] = deque()
            self._active = 0
        self.query.reset()

    def _count_since(self, since: float) -> int:
        n = 0
        for t in reversed(self._starts):
            if t <= since:
                break
            n += 1
        return n

    def acquire(self) -> bool:
        """Admit one request (remember to `release`), or return False when a limit is exceeded."""
        cfg = self.cfg
        now = time.monotonic()
        with self._lock:
            while self._starts and self._starts[0] <= now - 3600:
                self._starts.popleft()
            if cfg.max_concurrent is not None and self._active >= cfg.max_concurrent:
                return False
            if cfg.max_per_second is not None and self._count_since(now - 1.0) >= cfg.max_per_second:
                return False
            if cfg.max_per_hour is not None and len(self._starts) >= cfg.max_per_hour:
                return False
            self._starts.append(now)
            self._active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._active -= 1


class Denied(NamedTuple):
    message: str
    retry_after: int


class QueryLimiter:
    """Mixpanel's query API limits (Engage, segmentation): N per hour (sliding window) and N concurrent."""

    def __init__(self, cfg: ProjectConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._starts: deque[float] = deque()
            self._active = 0

    def acquire(self) -> Denied | None:
        """None when admitted (remember to `release`), else why not and when to retry."""
        cfg = self.cfg
        now = time.monotonic()
        with self._lock:
            while self._starts and self._starts[0] <= now - 3600:
                self._starts.popleft()
            if cfg.query_max_concurrent is not None and self._active >= cfg.query_max_concurrent:
                return Denied("too many concurrent queries", 1)
            if cfg.query_max_per_hour is not None and len(self._starts) >= cfg.query_max_per_hour:
                wait = math.ceil(self._starts[0] + 3600 - now) if self._starts else 1
                return Denied(f"query rate limit exceeded: {cfg.query_max_per_hour} per hour", max(1, wait))
            self._starts.append(now)
            self._active += 1
            return None

    def release(self) -> None:
        with self._lock:
            self._active -= 1
