"""`/_sandbox/*` admin endpoints: stats, reset, faults, quirks and the expected per-day results."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sandbox.cache import day_summary
from sandbox.config import ProjectConfig
from sandbox.data import fingerprint, iter_day_lines, split_line
from sandbox.export import BadRequest, parse_date, processed_by
from sandbox.faults import FaultError
from sandbox.routing import Request, Response, error, json_response, route


def expected(cfg: ProjectConfig, query: dict[str, str]) -> dict[str, Any]:
    """Rows and fingerprint per day of the un-faulted data (duplicates and hot-shard rows included);
    with ``processed_until_ms``, of the events processed by then only."""
    start, end = parse_date(query, "from_date"), parse_date(query, "to_date")
    if start > end:
        raise BadRequest("from_date cannot be later than to_date")
    cut = query.get("processed_until_ms")
    if cut is not None and not cut.isdigit():
        raise BadRequest("processed_until_ms must be epoch milliseconds")
    out: dict[str, Any] = {}
    day = start
    while day <= end:
        if cut is None:
            out[day.isoformat()] = day_summary(cfg, day).as_dict()
        else:
            visible = processed_by(int(cut))
            lines = (line for line in iter_day_lines(cfg, day) if visible(json.loads(split_line(line)[1])))
            rows, fp = fingerprint(lines)
            out[day.isoformat()] = {"rows": rows, "fingerprint": fp}
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
        return json_response(200, expected(req.state.cfg, req.query))
    except BadRequest as exc:
        return error(400, str(exc))
