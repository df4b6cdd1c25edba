"""Request statistics and Mixpanel's per-project export rate limits."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

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


class Stats:
    """Thread-safe counters over export requests; tests use them to check a client's rate budget."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.export_requests = 0
            self.responses: Counter[int] = Counter()
            self.rate_limited = 0
            self.in_flight = 0
            self.max_concurrent = 0
            self.request_times: list[float] = []
            self.bytes_served = 0
            self.log: list[dict[str, Any]] = []

    def begin(self) -> float:
        now = time.monotonic()
        with self._lock:
            self.export_requests += 1
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

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            times = list(self.request_times)
            return {
                "export_requests": self.export_requests,
                "responses": {str(k): v for k, v in sorted(self.responses.items())},
                "rate_limited": self.rate_limited,
                "in_flight": self.in_flight,
                "max_concurrent": self.max_concurrent,
                "request_times": times,
                "max_in_any_second": max_in_window(times),
                "bytes_served": self.bytes_served,
                "log": list(self.log),
            }


class RateLimiter:
    """Mixpanel export limits per project: N/second, N/hour (sliding windows) and N concurrent."""

    def __init__(self, cfg: ProjectConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._starts: deque[float] = deque()
            self._active = 0

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
