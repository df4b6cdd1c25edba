"""Mixpanel API authentication, shared by the export route and future Engage/query routes."""

from __future__ import annotations

import base64
import binascii

from sandbox.routing import Request, Response, error


def _basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def authenticate(req: Request) -> Response | None:
    """None when the credentials may read this project, else the error response Mixpanel gives."""
    cfg = req.state.cfg
    creds = _basic_auth(req.headers.get("Authorization", ""))
    if creds == (cfg.legacy_secret, ""):
        return None  # legacy project secret: the project is implied, no project_id needed
    if creds != (cfg.username, cfg.secret):
        return error(401, "Unable to authenticate request")
    project = req.query.get("project_id", "")
    if not project:
        return error(400, "project_id is required for service account authentication")
    if not project.isdigit():
        return error(400, f"invalid project_id: {project!r}")
    if int(project) != cfg.project_id:
        return error(403, f"service account does not have access to project {project}")
    return None
