"""A small route table so more Mixpanel endpoints (Engage, GDPR, query counts) can live in their own modules.

A route function takes a `Request` and returns a `Response`, or None when it wrote the response itself
(streamed bodies). New modules register with `@route("POST", "/api/query/engage", "/api/2.0/engage")` and
are imported by `sandbox.server`. Exact paths win; `@prefix_route("GET", "/api/app/data-deletions/v3.0")`
serves `<prefix>/<id>` paths that no exact route claims.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from sandbox.state import SandboxState


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes
    state: SandboxState
    handler: BaseHTTPRequestHandler

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


RouteFn = Callable[[Request], Response | None]
ROUTES: dict[tuple[str, str], RouteFn] = {}
# Routes ending in a path parameter (`/api/app/data-deletions/v3.0/<task_id>`), tried after exact routes.
PREFIX_ROUTES: dict[tuple[str, str], RouteFn] = {}


def normalize(path: str) -> str:
    # Mixpanel accepts both /api/2.0/export and /api/2.0/export/.
    return path.rstrip("/") or "/"


def route(method: str, *paths: str) -> Callable[[RouteFn], RouteFn]:
    def register(fn: RouteFn) -> RouteFn:
        for path in paths:
            ROUTES[(method.upper(), normalize(path))] = fn
        return fn

    return register


def prefix_route(method: str, prefix: str) -> Callable[[RouteFn], RouteFn]:
    """Registers `fn` for `<prefix>/<one or more segments>`; the function reads the rest with `path_tail`."""

    def register(fn: RouteFn) -> RouteFn:
        PREFIX_ROUTES[(method.upper(), normalize(prefix))] = fn
        return fn

    return register


def path_tail(path: str, prefix: str) -> str | None:
    """What follows `<prefix>/` in `path` (None when `path` is not below `prefix`)."""
    head = normalize(prefix) + "/"
    path = normalize(path)
    return path[len(head) :] if path.startswith(head) and len(path) > len(head) else None


def find(method: str, path: str) -> RouteFn | None:
    fn = ROUTES.get((method.upper(), normalize(path)))
    if fn is not None:
        return fn
    for (m, prefix), prefixed in PREFIX_ROUTES.items():
        if m == method.upper() and path_tail(path, prefix) is not None:
            return prefixed
    return None


def path_known(path: str) -> bool:
    if any(p == normalize(path) for _, p in ROUTES):
        return True
    return any(path_tail(path, prefix) is not None for _, prefix in PREFIX_ROUTES)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Response(status, body, "application/json", dict(headers or {}))


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)
