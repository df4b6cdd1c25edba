"""`POST /api/query/engage` (and legacy `/api/2.0/engage`): Mixpanel's user profile query, paged by session.

The response is one JSON object, `{"page", "page_size", "session_id", "status", "total", "results": [...]}`,
streamed chunked with the `results` entries written in batches as they are generated, so a 10,000-profile
page never exists as Python objects. `total` is only sent on page 0: Mixpanel documents it as reliable on
the first page only, and omitting it later makes a client that trusts a later `total` fail loudly.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from sandbox.auth import authenticate
from sandbox.engage_session import (
    BadRequest,
    PageRequest,
    parse_page_request,
    parse_query,
    selection,
    sessions,
)
from sandbox.faults import Fault
from sandbox.people import iter_profiles, people_fingerprint
from sandbox.routing import Request, Response, error, json_response, route
from sandbox.stats import EndpointStats
from sandbox.stream import ChunkedBody, Dropped

WRITE_BATCH = 1 << 16
NO_PLAN = "Your plan does not include this feature"


def form_params(req: Request) -> dict[str, str]:
    """Query string overlaid with the form body (Mixpanel's clients send the form; project_id is in the URL)."""
    params = dict(req.query)
    params.update(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


def _fault_response(fault: Fault) -> Response:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    if isinstance(fault.body, str):
        return Response(fault.code, fault.body.encode(), "text/plain; charset=utf-8", headers)
    # 402 is what Mixpanel answers when the plan has no access to the query API.
    default = NO_PLAN if fault.code == 402 else f"sandbox fault: HTTP {fault.code}"
    return json_response(fault.code, fault.body if fault.body is not None else {"error": default}, headers)


def _head(page: PageRequest, sid: str, total: int) -> str:
    head: dict[str, Any] = {"page": page.page, "page_size": page.page_size, "session_id": sid, "status": "ok"}
    if page.page == 0:
        head["total"] = total
    return json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] + ',"results":['


def _write_body(
    req: Request, head: str, indexes: Sequence[int], wanted: frozenset[str] | None, body: ChunkedBody
) -> None:
    """The JSON object in ~64 KB chunks; head and tail ride along with the first and last results."""
    parts = [head]
    size = 0
    sep = ""
    for distinct, props in iter_profiles(req.state.cfg, indexes, wanted):
        # Generated distinct ids are plain ASCII (user_k@example.com, hex device ids): no JSON escaping needed.
        entry = f'{sep}{{"$distinct_id":"{distinct}","$properties":{props}}}'
        parts.append(entry)
        size += len(entry)
        sep = ","
        if size >= WRITE_BATCH:
            body.write("".join(parts).encode())
            parts, size = [], 0
    parts.append("]}")
    body.write("".join(parts).encode())


def _abort(req: Request) -> None:
    req.handler.close_connection = True
    with contextlib.suppress(OSError):
        req.handler.connection.shutdown(socket.SHUT_RDWR)


def _send_page(req: Request, page: PageRequest, sid: str, fault: Fault | None, stats: EndpointStats) -> None:
    query = sessions(req.state).get(sid) or page.query
    chosen = selection(req.state.cfg, query)
    gzip = req.state.cfg.gzip and "gzip" in req.headers.get("Accept-Encoding", "").lower()
    handler = req.handler
    # http.server sends headers, chunks and the final chunk as separate small writes; without NODELAY,
    # Nagle plus the client's delayed ACK adds ~40 ms to every page (a 1000-page download: 40 s).
    with contextlib.suppress(OSError):
        handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    if gzip:
        handler.send_header("Content-Encoding", "gzip")
    handler.end_headers()
    drop = fault.bytes if fault is not None and fault.kind == "drop_after_bytes" else None
    body = ChunkedBody(handler.wfile, gzip=gzip, drop_after=drop, on_bytes=stats.add_bytes)
    try:
        _write_body(
            req, _head(page, sid, chosen.total), chosen.page(page.page, page.page_size), query.wanted, body
        )
        body.finish()
    except Dropped:
        _abort(req)


def _session(req: Request, page: PageRequest) -> str:
    store = sessions(req.state)
    if page.session_id is not None:
        # The session's own query wins over any where/output_properties resent with later pages.
        if store.get(page.session_id) is None:
            raise BadRequest("invalid session_id")
        return page.session_id
    if page.page > 0:
        raise BadRequest("session_id is required for page > 0")
    return store.open(req.state.cfg, page.query)


def _admitted(
    req: Request, page: PageRequest, sid: str, entry: dict[str, Any], stats: EndpointStats
) -> Response | None:
    fault = req.state.faults.take("engage", page.page)
    entry["fault"] = fault.kind if fault is not None else None
    if fault is not None and fault.kind == "slow_first_byte":
        time.sleep(fault.seconds)
    if fault is not None and fault.kind == "status":
        response = _fault_response(fault)
        stats.response(response.status, entry)
        return response
    stats.response(200, entry)
    _send_page(req, page, sid, fault, stats)
    return None


def _checked(req: Request, entry: dict[str, Any]) -> tuple[PageRequest, str] | Response:
    problem = authenticate(req)
    if problem is not None:
        return problem
    try:
        page = parse_page_request(form_params(req))
        entry.update(page=page.page, session_id=page.session_id)
        sid = _session(req, page)
    except BadRequest as exc:
        return error(400, str(exc))
    entry["session_id"] = sid
    return page, sid


@route("POST", "/api/query/engage", "/api/2.0/engage")
def engage(req: Request) -> Response | None:
    stats = req.state.stats.engage  # held: a concurrent reset() swaps in a fresh object
    stats.begin()
    entry: dict[str, Any] = {"t": time.monotonic(), "page": None, "session_id": None, "fault": None}
    try:
        checked = _checked(req, entry)
        if isinstance(checked, Response):
            stats.response(checked.status, entry)
            return checked
        denied = req.state.limiter.query.acquire()
        if denied is not None:
            stats.response(429, entry)
            return error(429, denied.message, {"Retry-After": str(denied.retry_after)})
        try:
            return _admitted(req, *checked, entry, stats)
        finally:
            req.state.limiter.query.release()
    finally:
        stats.end()


@route("GET", "/_sandbox/people_expected")
def people_expected(req: Request) -> Response:
    """Rows and fingerprint of the profiles a complete, un-faulted Engage download returns."""
    try:
        query = parse_query(req.query)
    except BadRequest as exc:
        return error(400, str(exc))
    result = people_fingerprint(req.state.cfg, query.where, query.output_properties, query.distinct_ids)
    return json_response(200, result)
