"""Data changes after a day was first exported: late events and completed user deletions.

Mixpanel's data for a past day is not frozen. Mobile SDKs flush queued events hours or days later and the
import API accepts events of any past day, so a day can gain lines (with a recent `mp_processing_time_ms`,
which is how `where=number(properties["mp_processing_time_ms"]) > X` finds them). A completed GDPR/CCPA
deletion removes every event of the deleted users from later exports. The overlay applies to whatever serves
or summarises data (export, `/_sandbox/expected`, the query API counts); `touched(day)` tells the export
when it must leave its cached-file fast path.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from sandbox.config import ProjectConfig
from sandbox.data import EVENT_JSON, P_LOGGED_IN, day_start, device_count, identity, split_line


@dataclass(frozen=True)
class _Batch:
    """One `add_events` call: lines `first .. first+count-1` of the day's added lines."""

    first: int
    count: int
    processed_at_ms: int
    user: str | None = None  # every line sent by this identified user (None: drawn from the device pool)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _added_line(
    cfg: ProjectConfig, rng: random.Random, start: int, processed_at_ms: int, user: str | None
) -> bytes:
    rand = rng.random
    # `time` is inside the day as served: for local-time projects day_start is the local-epoch midnight.
    t = start + int(rand() * 86400)
    _, ids = identity(cfg, int(rand() * device_count(cfg)), rand() < P_LOGGED_IN)
    if user is not None:
        name = json.dumps(user)
        ids = f'"distinct_id":{name},"$user_id":{name}'
    event = EVENT_JSON[int(rand() * len(EVENT_JSON))]
    insert = f"{rng.getrandbits(96):024x}"
    props = f'{{"time":{t},{ids},"$insert_id":"{insert}","mp_processing_time_ms":{processed_at_ms}}}'
    return f'{{"event":{event},"properties":{props}}}'.encode()


def _batch_lines(cfg: ProjectConfig, day: date, batch: _Batch) -> Iterator[bytes]:
    # Seeded by what came before on this day, so the same sequence of calls gives the same lines.
    rng = random.Random(f"added:{cfg.seed}:{day.toordinal()}:{batch.first}")
    start = day_start(day)
    for _ in range(batch.count):
        yield _added_line(cfg, rng, start, batch.processed_at_ms, batch.user)


def _ids_of(props: dict[str, Any]) -> set[str]:
    """Every id a deletion request may name for this event (simplified-merge anonymous ids included)."""
    ids = {str(props[k]) for k in ("distinct_id", "$user_id") if props.get(k)}
    device = props.get("$device_id")
    if device:
        ids.update((str(device), f"$device:{device}"))
    return ids


def _kept(lines: Iterable[bytes], deleted: frozenset[str]) -> Iterator[bytes]:
    if not deleted:
        yield from lines
        return
    for line in lines:
        if deleted.isdisjoint(_ids_of(json.loads(split_line(line)[1]))):
            yield line


class Changes:
    """Thread-safe overlay of added lines per day and deleted ids; kept across `SandboxState.reset()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[date, list[_Batch]] = {}
        self._deleted: frozenset[str] = frozenset()

    def add_events(
        self, day: date, count: int, processed_at_ms: int | None = None, user: str | None = None
    ) -> int:
        """Append ``count`` late events to ``day``, processed at ``processed_at_ms`` (default: now), each
        sent by ``user`` when given (a test's user is then in the day only because the test put it there)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        processed = now_ms() if processed_at_ms is None else processed_at_ms
        with self._lock:
            batches = self._batches.setdefault(day, [])
            first = sum(b.count for b in batches)
            if count:
                batches.append(_Batch(first, count, processed, user))
        return count

    def delete_users(self, distinct_ids: Iterable[str]) -> None:
        """Every later served line naming one of these ids (see `_ids_of`) is gone."""
        ids = frozenset(str(i) for i in distinct_ids)
        with self._lock:
            self._deleted = self._deleted | ids

    def deleted(self) -> frozenset[str]:
        with self._lock:
            return self._deleted

    def touched(self, day: date) -> bool:
        with self._lock:
            return bool(self._deleted) or bool(self._batches.get(day))

    def lines(self, cfg: ProjectConfig, day: date, base: Iterable[bytes]) -> Iterator[bytes]:
        """The day's base lines, then its added lines, both without the deleted users' events."""
        with self._lock:
            batches = list(self._batches.get(day, ()))
            deleted = self._deleted
        yield from _kept(base, deleted)
        for batch in batches:
            yield from _kept(_batch_lines(cfg, day, batch), deleted)

    def clear(self) -> None:
        with self._lock:
            self._batches.clear()
            self._deleted = frozenset()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            added = {d.isoformat(): sum(b.count for b in bs) for d, bs in sorted(self._batches.items())}
            return {"added": added, "deleted": sorted(self._deleted)}
