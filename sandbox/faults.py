"""Fault plan: one-shot request faults and persistent data quirks.

Fault dicts (each applies to the next `times` requests of its endpoint, default 1, consumed in order, one per
request). `"endpoint"` is "export" (the default, so older plans keep targeting export only) or "engage";
engage faults may add `"page": N` to hit only the next request for that page (status, drop_after_bytes and
slow_first_byte only):
    {"kind": "status", "code": 503, "body": {...} | "text", "retry_after": 2}
    {"kind": "drop_after_bytes", "bytes": 4096}        close the socket after N body bytes, no final chunk
    {"kind": "terminated_early", "after_lines": 10, "text": "export terminated early"}
    {"kind": "partial_last_line", "after_lines": 10}   then half of the next line, no newline, clean end
    {"kind": "slow_first_byte", "seconds": 1.5}        sleep before the status line, then serve normally
    {"kind": "status", "code": 402, "endpoint": "engage"}           plan without Engage access
    {"kind": "status", "code": 500, "endpoint": "engage", "page": 3, "times": 1}
    {"kind": "status", "code": 429, "endpoint": "counts", "times": 3}   the query API's per-day counts
Quirk dicts (persistent until reset):
    {"kind": "malformed_line", "day": "2024-01-02", "index": 5}   invalid JSON line inserted before line 5
    {"kind": "split_record", "day": "2024-01-02", "index": 7}     line 7 written across two physical lines
    {"kind": "count_extra", "day": "2024-01-02", "index": 3}      the query API counts 3 more events of the
                                                                  day's first event name asked than the export
                                                                  serves: a day no re-export brings in sync
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

FAULT_KINDS = ("status", "drop_after_bytes", "terminated_early", "partial_last_line", "slow_first_byte")
QUIRK_KINDS = ("malformed_line", "split_record", "count_extra")
ENDPOINTS = ("export", "engage", "counts")
ENGAGE_KINDS = ("status", "drop_after_bytes", "slow_first_byte")
MALFORMED_LINE = b'{"event": "broken", "properties": {'
TERMINATED_TEXT = "export terminated early"


class FaultError(ValueError):
    pass


def _int(d: dict[str, Any], key: str, default: int | None = None) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultError(f"{key!r} must be an integer")
    return value


@dataclass
class Fault:
    kind: str
    times: int = 1
    code: int = 500
    body: Any = None
    retry_after: int | float | str | None = None
    bytes: int = 0
    after_lines: int = 0
    seconds: float = 0.0
    text: str = TERMINATED_TEXT
    endpoint: str = "export"
    page: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fault:
        if not isinstance(d, dict) or d.get("kind") not in FAULT_KINDS:
            raise FaultError(f"fault kind must be one of {FAULT_KINDS}: {d!r}")
        fault = cls(kind=d["kind"], times=_int(d, "times", 1), body=d.get("body"))
        fault.code = _int(d, "code", d.get("status", 500))
        fault.retry_after = d.get("retry_after")
        fault.bytes = _int(d, "bytes", 0)
        fault.after_lines = _int(d, "after_lines", 0)
        fault.seconds = float(d.get("seconds", 0.0))
        fault.text = str(d.get("text", TERMINATED_TEXT))
        if fault.times < 1:
            raise FaultError("'times' must be >= 1")
        _set_target(fault, d)
        return fault

    def matches(self, endpoint: str, page: int | None) -> bool:
        return self.endpoint == endpoint and (self.page is None or self.page == page)

    @property
    def needs_lines(self) -> bool:
        """Faults that count lines; they force the per-line serving path."""
        return self.kind in ("terminated_early", "partial_last_line")


def _set_target(fault: Fault, d: dict[str, Any]) -> None:
    fault.endpoint = str(d.get("endpoint", "export"))
    if fault.endpoint not in ENDPOINTS:
        raise FaultError(f"endpoint must be one of {ENDPOINTS}")
    if fault.endpoint == "engage" and fault.kind not in ENGAGE_KINDS:
        raise FaultError(f"engage faults must be one of {ENGAGE_KINDS}")
    if fault.endpoint == "counts" and fault.kind != "status":
        raise FaultError("counts faults must be of kind 'status'")
    if d.get("page") is not None:
        if fault.endpoint != "engage":
            raise FaultError("'page' only applies to engage faults")
        fault.page = _int(d, "page")


@dataclass(frozen=True)
class Quirk:
    kind: str
    day: date
    index: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Quirk:
        if not isinstance(d, dict) or d.get("kind") not in QUIRK_KINDS:
            raise FaultError(f"quirk kind must be one of {QUIRK_KINDS}: {d!r}")
        try:
            day = date.fromisoformat(str(d["day"]))
        except (KeyError, ValueError) as exc:
            raise FaultError("quirk needs 'day' as YYYY-MM-DD") from exc
        return cls(kind=d["kind"], day=day, index=_int(d, "index"))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "day": self.day.isoformat(), "index": self.index}


def split_record(line: bytes) -> tuple[bytes, bytes]:
    # Mixpanel occasionally breaks one record over two physical lines; we break right after the first
    # comma after `"properties":{`, which is a token boundary because `time` (an int) always comes first.
    start = line.find(b'"properties":{')
    cut = line.find(b",", start) + 1 if start >= 0 else 0
    if cut <= 0:
        cut = len(line) // 2
    return line[:cut], line[cut:]


class FaultPlan:
    """Thread-safe queue of pending faults plus the persistent quirks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Fault] = []
        self._quirks: dict[date, list[Quirk]] = {}

    def add(self, faults: list[Fault | dict[str, Any]]) -> None:
        parsed = [f if isinstance(f, Fault) else Fault.from_dict(f) for f in faults]
        with self._lock:
            self._pending.extend(parsed)

    def take(self, endpoint: str = "export", page: int | None = None) -> Fault | None:
        """The first fault matching this request (endpoint, engage page), consuming one of its `times`."""
        with self._lock:
            for i, fault in enumerate(self._pending):
                if fault.matches(endpoint, page):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._pending.pop(i)
                    return fault
            return None

    def set_quirks(self, quirks: list[Quirk | dict[str, Any]]) -> None:
        parsed = [q if isinstance(q, Quirk) else Quirk.from_dict(q) for q in quirks]
        by_day: dict[date, list[Quirk]] = {}
        for quirk in parsed:
            by_day.setdefault(quirk.day, []).append(quirk)
        with self._lock:
            self._quirks = by_day

    def quirks_for(self, day: date) -> list[Quirk]:
        with self._lock:
            return list(self._quirks.get(day, ()))

    def reset(self) -> None:
        with self._lock:
            self._pending.clear()
            self._quirks = {}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending": [asdict(f) for f in self._pending],
                "quirks": [q.as_dict() for qs in self._quirks.values() for q in qs],
            }
