"""The sandbox HTTP server and `SandboxServer`, a handle for tests, the demo and benchmarks."""

from __future__ import annotations

import threading
import time
import traceback
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import sandbox.admin
import sandbox.counts  # registers the query API counts route
import sandbox.engage  # registers the engage routes
import sandbox.export  # registers the export route
import sandbox.gdpr  # registers the GDPR deletion routes
from sandbox.config import ProjectConfig
from sandbox.faults import Fault, Quirk
from sandbox.people import people_fingerprint
from sandbox.routing import Request, Response, error, find, path_known
from sandbox.state import SandboxState


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # concurrency tests open many connections at once

    def __init__(self, address: tuple[str, int], state: SandboxState) -> None:
        self.state = state
        super().__init__(address, SandboxHandler)


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MixpanelSandbox/1.0"
    server: SandboxHTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self._read_body()
        fn = find(method, parts.path)
        if fn is None:
            status = 405 if path_known(parts.path) else 404
            self.send(error(status, "method not allowed" if status == 405 else "not found"))
            return
        req = Request(method, parts.path, query, self.headers, body, self.server.state, self)
        self.response_started = False
        try:
            response = fn(req)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-stream
            return
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            response = None if self.response_started else error(500, "sandbox internal error")
        if response is not None:
            self.send(response)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.response_started = True
        super().send_response(code, message)

    def send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)


class SandboxServer:
    """Runs the sandbox in a daemon thread: `with SandboxServer(cfg).start() as sb: httpx.get(sb.url + ...)`."""

    def __init__(self, cfg: ProjectConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.cfg = cfg or ProjectConfig()
        self.state = SandboxState(self.cfg)
        self.host = host
        self.port = port
        self._httpd: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._httpd = SandboxHTTPServer((self.host, self.port), self.state)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def add_faults(self, faults: list[Fault | dict[str, Any]]) -> None:
        self.state.faults.add(faults)

    def wait_until_faults_taken(self, timeout_seconds: float = 30.0) -> None:
        """Until requests have taken every added fault (faults are taken once a request is admitted, so
        requests slowed by ``slow_first_byte`` now hold their slots)."""
        deadline = time.monotonic() + timeout_seconds
        while self.state.faults.snapshot()["pending"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no request took the pending faults within {timeout_seconds} s")
            time.sleep(0.01)

    def set_quirks(self, quirks: list[Quirk | dict[str, Any]]) -> None:
        self.state.faults.set_quirks(quirks)

    def stats(self) -> dict[str, Any]:
        return self.state.stats.snapshot()

    def expected(
        self, from_date: date | str, to_date: date | str, processed_until_ms: int | None = None
    ) -> dict[str, Any]:
        query = {"from_date": str(from_date), "to_date": str(to_date)}
        if processed_until_ms is not None:
            query["processed_until_ms"] = str(processed_until_ms)
        return sandbox.admin.expected(self.cfg, query, self.state.changes)

    def add_events(
        self, day: date | str, count: int, processed_at_ms: int | None = None, user: str | None = None
    ) -> int:
        """Late events for a past ``day`` (mobile flushes, the import API), processed at ``processed_at_ms``
        (default: now), all sent by ``user`` if given; returns how many were added."""
        return self.state.changes.add_events(date.fromisoformat(str(day)), count, processed_at_ms, user)

    def delete_users(self, ids: list[str]) -> None:
        """As if a deletion completed: these ids' events are gone from every later export and count."""
        self.state.changes.delete_users(ids)

    def clear_changes(self) -> None:
        """Drop added events, deletions and GDPR tasks (`reset()` keeps them)."""
        self.state.clear_changes()

    def gdpr_tasks(self) -> dict[str, dict[str, Any]]:
        """``{task_id: {"distinct_ids", "compliance_type", "status", "polls"}}`` of the GDPR API."""
        return self.state.gdpr.snapshot()

    def set_processed_until(self, epoch_ms: int | None) -> None:
        """Serve only the events Mixpanel has processed by ``epoch_ms`` (None: all of them)."""
        self.state.processed_until_ms = epoch_ms

    def people_expected(
        self,
        where: str | None = None,
        output_properties: list[str] | None = None,
        distinct_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        """{"rows", "fingerprint"} of the profiles a complete Engage download with these filters returns."""
        return people_fingerprint(self.cfg, where, output_properties, distinct_ids)

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> Self:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
