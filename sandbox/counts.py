"""`GET /api/query/events`: per-day event counts from Mixpanel's Query API, a cheap check of a synced day.

Counts are over what an export would serve right now (late events, deletions and the processing clock
applied), but deduplicated the way Mixpanel's query engine does and the export does not: lines with an
`$insert_id` count once per (event name, distinct_id, time, $insert_id); lines without one each count.
So a count can be below the raw line count of the same day; compare it with a deduplicated count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sandbox.auth import authenticate
from sandbox.data import split_line
from sandbox.engage import _fault_response
from sandbox.export import BadRequest, day_source, parse_date, processed_by
from sandbox.routing import Request, Response, error, json_response, route
from sandbox.state import SandboxState

MAX_EVENTS = 100


@dataclass(frozen=True)
class CountQuery:
    names: tuple[str, ...]
    from_date: date
    to_date: date

    def days(self) -> list[date]:
        return [self.from_date + timedelta(days=i) for i in range((self.to_date - self.from_date).days + 1)]


def _names(raw: str | None) -> tuple[str, ...]:
    try:
        names = json.loads(raw) if raw else None
    except ValueError:
        names = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadRequest("event must be a non-empty JSON array of event names")
    unique = tuple(dict.fromkeys(names))
    if len(unique) > MAX_EVENTS:
        raise BadRequest(f"too many events: at most {MAX_EVENTS} per query")
    return unique


def parse_count_query(query: dict[str, str], today: date) -> CountQuery:
    names = _names(query.get("event"))
    # Only the shape pipelines use: totals per day. Mixpanel also has unique/average and other units.
    if query.get("type") != "general":
        raise BadRequest("type must be 'general'")
    if query.get("unit") != "day":
        raise BadRequest("unit must be 'day'")
    start, end = parse_date(query, "from_date"), parse_date(query, "to_date")
    if start > end:
        raise BadRequest("from_date cannot be later than to_date")
    if end > today:
        raise BadRequest("to_date cannot be later than today")
    return CountQuery(names, start, end)


def dedup_counts(lines: Iterable[bytes], wanted: frozenset[bytes], cut: int | None) -> dict[bytes, int]:
    """Per event name (UTF-8), the lines Mixpanel counts at query time; ``cut`` is the processing clock."""
    counts = dict.fromkeys(wanted, 0)
    seen: set[tuple[bytes, Any, Any, str]] = set()
    visible = processed_by(cut) if cut is not None else None
    for line in lines:
        name, raw = split_line(line)
        if name not in wanted:
            continue
        props = json.loads(raw)
        if visible is not None and not visible(props):
            continue
        insert_id = props.get("$insert_id")
        if insert_id is not None:
            key = (name, props.get("distinct_id"), props.get("time"), str(insert_id))
            if key in seen:
                continue
            seen.add(key)
        counts[name] += 1
    return counts


def count_events(state: SandboxState, q: CountQuery) -> dict[str, Any]:
    """The Query API answer: ``{"data": {"series": [days], "values": {name: {day: n}}}, "legend_size"}``."""
    wanted = frozenset(n.encode() for n in q.names)
    values: dict[str, dict[str, int]] = {name: {} for name in q.names}
    series = [d.isoformat() for d in q.days()]
    for day, key in zip(q.days(), series, strict=True):
        counts = dedup_counts(day_source(state, day), wanted, state.processed_until_ms)
        for quirk in state.faults.quirks_for(day):
            if quirk.kind == "count_extra" and q.names:
                counts[q.names[0].encode()] += quirk.index
        for name in q.names:
            values[name][key] = counts[name.encode()]
    return {"data": {"series": series, "values": values}, "legend_size": len(q.names)}


def _answer(req: Request) -> Response:
    problem = authenticate(req)
    if problem is not None:
        return problem
    try:
        q = parse_count_query(req.query, req.state.cfg.current_day())
    except BadRequest as exc:
        return error(400, str(exc))
    fault = req.state.faults.take("counts")
    if fault is not None:
        return _fault_response(fault)
    denied = req.state.limiter.query.acquire()
    if denied is not None:
        return error(429, denied.message, {"Retry-After": str(denied.retry_after)})
    try:
        return json_response(200, count_events(req.state, q))
    finally:
        req.state.limiter.query.release()


@route("GET", "/api/query/events")
def events_counts(req: Request) -> Response:
    stats = req.state.stats.counts  # held: a concurrent reset() swaps in a fresh object
    stats.begin()
    keys = ("event", "from_date", "to_date", "type", "unit")
    entry: dict[str, Any] = {"t": time.monotonic(), **{k: req.query[k] for k in keys if k in req.query}}
    try:
        response = _answer(req)
        stats.response(response.status, entry)
        stats.add_bytes(len(response.body))
        return response
    finally:
        stats.end()
