"""`/_sandbox/*` admin endpoints: stats, reset, faults, quirks and the expected per-day results."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sandbox.cache import day_summary
from sandbox.config import ProjectConfig
from sandbox.export import BadRequest, parse_date
from sandbox.faults import FaultError
from sandbox.routing import Request, Response, error, json_response, route


def expected(cfg: ProjectConfig, query: dict[str, str]) -> dict[str, Any]:
    """Rows and fingerprint per day of the un-faulted data (duplicates and hot-shard rows included)."""
    start, end = parse_date(query, "from_date"), parse_date(query, "to_date")
    if start > end:
        raise BadRequest("from_date cannot be later than to_date")
    out: dict[str, Any] = {}
    day = start
    while day <= end:
        out[day.isoformat()] = day_summary(cfg, day).as_dict()
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


@route("GET", "/_sandbox/expected")
def expected_route(req: Request) -> Response:
    try:
        return json_response(200, expected(req.state.cfg, req.query))
    except BadRequest as exc:
        return error(400, str(exc))
