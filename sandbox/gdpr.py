"""Mixpanel's GDPR/CCPA deletion API (v3.0): create a deletion task, then poll its status.

    POST /api/app/data-deletions/v3.0/?token=<project token>   {"distinct_ids": [...], "compliance_type": ...}
    GET  /api/app/data-deletions/v3.0/<task_id>?token=<project token>
Both need `Authorization: Bearer <GDPR OAuth token>` (a personal token, valid one year). Mixpanel allows
1 request per second to this API and at most 1999 ids per request. A task stays PENDING for
`cfg.gdpr_polls_until_done` polls, then reports SUCCESS; only then are its users' events gone from exports
(Mixpanel never reaches copies already exported: a pipeline must purge its own warehouse).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sandbox.routing import Request, Response, json_response, path_tail, prefix_route, route
from sandbox.stats import EndpointStats

PATH = "/api/app/data-deletions/v3.0"
MAX_IDS = 1999
COMPLIANCE_TYPES = ("GDPR", "CCPA")


class GdprError(ValueError):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

    def response(self) -> Response:
        return json_response(self.status, {"status": "error", "error": str(self)}, self.headers)


def _authorize(req: Request) -> None:
    cfg = req.state.cfg
    scheme, _, bearer = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or bearer.strip() != cfg.gdpr_oauth_token:
        raise GdprError(401, "invalid or missing GDPR OAuth token (Authorization: Bearer <token>)")
    token = req.query.get("token")
    if not token:
        raise GdprError(400, "token is a required parameter")
    if token != cfg.project_token:
        raise GdprError(403, "token does not match a project you have access to")
    if not req.state.gdpr.admit():
        raise GdprError(429, "rate limit exceeded: 1 request per second", {"Retry-After": "1"})


def _deletion_body(req: Request) -> tuple[list[str], str]:
    try:
        payload = req.json()
    except ValueError as exc:
        raise GdprError(400, "body must be JSON") from exc
    if not isinstance(payload, dict):
        raise GdprError(400, 'body must be {"distinct_ids": [...], "compliance_type": "GDPR"|"CCPA"}')
    ids = payload.get("distinct_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise GdprError(400, "distinct_ids must be a non-empty array of strings")
    if len(ids) > MAX_IDS:
        raise GdprError(400, f"too many distinct_ids: at most {MAX_IDS} per request, got {len(ids)}")
    compliance = payload.get("compliance_type", "GDPR")  # Mixpanel's default
    if compliance not in COMPLIANCE_TYPES:
        raise GdprError(400, f"compliance_type must be one of {', '.join(COMPLIANCE_TYPES)}")
    return ids, compliance


def _create(req: Request, entry: dict[str, Any]) -> Response:
    _authorize(req)
    if req.state.gdpr.take_failure():
        raise GdprError(500, "sandbox fault: HTTP 500")
    ids, compliance = _deletion_body(req)
    task_id = req.state.gdpr.create(ids, compliance)
    entry.update(task_id=task_id, ids=len(ids))
    return json_response(200, {"status": "ok", "results": {"task_id": task_id}})


def _status(req: Request, entry: dict[str, Any]) -> Response:
    _authorize(req)
    task_id = path_tail(req.path, PATH) or ""
    entry["task_id"] = task_id
    # The deletion completed: from now on the users' events are gone from every export.
    task = req.state.gdpr.poll(task_id, req.state.changes.delete_users)
    if task is None:
        raise GdprError(404, "task not found")
    results = {"status": task.status, "distinct_ids": task.distinct_ids}
    return json_response(200, {"status": "ok", "results": results})


Handler = Callable[[Request, dict[str, Any]], Response]


def _counted(req: Request, handler: Handler) -> Response:
    stats: EndpointStats = req.state.stats.gdpr  # held: a concurrent reset() swaps in a fresh object
    stats.begin()
    entry: dict[str, Any] = {"t": time.monotonic(), "method": req.method}
    try:
        try:
            response = handler(req, entry)
        except GdprError as exc:
            response = exc.response()
        stats.response(response.status, entry)
        return response
    finally:
        stats.end()


@route("POST", PATH)
def create_deletion(req: Request) -> Response:
    return _counted(req, _create)


@prefix_route("GET", PATH)
def deletion_status(req: Request) -> Response:
    return _counted(req, _status)


@route("GET", "/_sandbox/gdpr")
def show_tasks(req: Request) -> Response:
    """``{task_id: {"distinct_ids", "compliance_type", "status", "polls"}}``."""
    return json_response(200, req.state.gdpr.snapshot())


@route("POST", "/_sandbox/gdpr")
def gdpr_knobs(req: Request) -> Response:
    """``{"fail_next": N}``: the next N authorised deletion requests answer 500."""
    try:
        n = req.json().get("fail_next")
    except (ValueError, AttributeError):
        n = None
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return json_response(400, {"error": "fail_next must be an integer >= 0"})
    req.state.gdpr.set_fail_next(n)
    return json_response(200, {"fail_next": n})
