"""`/_sandbox/*` admin endpoints: stats, reset, faults, quirks, data changes and the expected per-day results."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from sandbox.cache import day_summary
from sandbox.changes import Changes
from sandbox.config import ProjectConfig
from sandbox.data import fingerprint, iter_day_lines, split_line
from sandbox.export import BadRequest, parse_date, processed_by
from sandbox.faults import FaultError
from sandbox.routing import Request, Response, error, json_response, route


def _day_expected(
    cfg: ProjectConfig, day: date, cut: int | None, changes: Changes | None
) -> dict[str, int | str]:
    touched = changes is not None and changes.touched(day)
    if cut is None and not touched:
        return day_summary(cfg, day).as_dict()
    lines: Iterable[bytes] = iter_day_lines(cfg, day)
    if changes is not None and touched:
        lines = changes.lines(cfg, day, lines)
    if cut is not None:
        visible = processed_by(cut)
        lines = (line for line in lines if visible(json.loads(split_line(line)[1])))
    rows, fp = fingerprint(lines)
    return {"rows": rows, "fingerprint": fp}


def expected(cfg: ProjectConfig, query: dict[str, str], changes: Changes | None = None) -> dict[str, Any]:
    """Rows and fingerprint per day of the un-faulted data (duplicates and hot-shard rows included), with
    the late events and deletions of ``changes``; with ``processed_until_ms``, of the events processed by
    then only."""
    start, end = parse_date(query, "from_date"), parse_date(query, "to_date")
    if start > end:
        raise BadRequest("from_date cannot be later than to_date")
    cut = query.get("processed_until_ms")
    if cut is not None and not cut.isdigit():
        raise BadRequest("processed_until_ms must be epoch milliseconds")
    out: dict[str, Any] = {}
    day = start
    while day <= end:
        out[day.isoformat()] = _day_expected(cfg, day, None if cut is None else int(cut), changes)
        day += timedelta(days=1)
    return out


def _list_body(req: Request) -> list[Any]:
    try:
        payload = req.json()
    except ValueError as exc:
        raise FaultError("body must be JSON") from exc
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        raise FaultError("body must be a JSON list")
    return payload


@route("GET", "/_sandbox/stats")
def stats(req: Request) -> Response:
    return json_response(200, req.state.stats.snapshot())


@route("POST", "/_sandbox/reset")
def reset(req: Request) -> Response:
    req.state.reset()
    return json_response(200, {"status": "ok"})


@route("GET", "/_sandbox/faults", "/_sandbox/quirks")
def show_faults(req: Request) -> Response:
    return json_response(200, req.state.faults.snapshot())


@route("POST", "/_sandbox/faults")
def add_faults(req: Request) -> Response:
    try:
        req.state.faults.add(_list_body(req))
    except FaultError as exc:
        return error(400, str(exc))
    return json_response(200, req.state.faults.snapshot())


@route("POST", "/_sandbox/quirks")
def set_quirks(req: Request) -> Response:
    try:
        req.state.faults.set_quirks(_list_body(req))
    except FaultError as exc:
        return error(400, str(exc))
    return json_response(200, req.state.faults.snapshot())


@route("POST", "/_sandbox/clock")
def set_clock(req: Request) -> Response:
    """``{"processed_until_ms": N}``: serve only events processed by N; null serves everything."""
    cut = req.json().get("processed_until_ms")
    if cut is not None and not isinstance(cut, int):
        return error(400, "processed_until_ms must be an integer (epoch ms) or null")
    req.state.processed_until_ms = cut
    return json_response(200, {"processed_until_ms": cut})


@route("GET", "/_sandbox/expected")
def expected_route(req: Request) -> Response:
    try:
        return json_response(200, expected(req.state.cfg, req.query, req.state.changes))
    except BadRequest as exc:
        return error(400, str(exc))


def _int_field(payload: dict[str, Any], key: str, default: int | None = None) -> int | None:
    value = payload.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadRequest(f"{key} must be an integer")
    return value


def _add_events(req: Request) -> int:
    payload = req.json()
    if not isinstance(payload, dict):
        raise BadRequest(
            'body must be {"day": "YYYY-MM-DD", "count": N, "processed_at_ms": optional, "user": optional}'
        )
    day = parse_date({"day": str(payload.get("day") or "")}, "day")
    count = _int_field(payload, "count")
    if count is None or count < 0:
        raise BadRequest("count must be an integer >= 0")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user must be a string")
    return req.state.changes.add_events(day, count, _int_field(payload, "processed_at_ms"), user)


@route("POST", "/_sandbox/events")
def add_events(req: Request) -> Response:
    """``{"day", "count", "processed_at_ms", "user"}``: late events (mobile flushes, the import API) for a past day."""
    try:
        return json_response(200, {"added": _add_events(req)})
    except (BadRequest, ValueError) as exc:
        return error(400, str(exc))


@route("POST", "/_sandbox/delete_users")
def delete_users(req: Request) -> Response:
    """``{"distinct_ids": [...]}``: as if a deletion completed; their events vanish from every export."""
    try:
        ids = req.json().get("distinct_ids")
    except (ValueError, AttributeError):
        ids = None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return error(400, "distinct_ids must be a JSON array of strings")
    req.state.changes.delete_users(ids)
    return json_response(200, req.state.changes.snapshot())


@route("GET", "/_sandbox/changes")
def show_changes(req: Request) -> Response:
    return json_response(200, req.state.changes.snapshot())


@route("POST", "/_sandbox/changes/clear")
def clear_changes(req: Request) -> Response:
    req.state.clear_changes()
    return json_response(200, {"status": "ok"})
