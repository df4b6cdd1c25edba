"""One fault-injecting HTTP proxy in front of every local store server (moto, the GCS emulator, Azurite).

None of those servers can fail on demand, so the blocks talk to them through this proxy: it forwards
requests byte for byte (the Host header kept as sent, since S3's SigV4 signs it and GCS builds its
resumable-upload URLs from it) and can answer the next N requests itself, with a 5xx in the store's own
error format, or drop their connection without an answer.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

# hop-by-hop headers are the proxy's own business; Expect is answered by the proxy (100 Continue)
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te"}
DROP = 0  # the status that drops the connection instead of answering

ErrorBody = Callable[[int], tuple[dict[str, str], bytes]]


class Seen(NamedTuple):
    method: str
    path: str
    status: int  # what the client got; DROP when the connection was dropped


class FaultProxy(ThreadingHTTPServer):
    """Forwards to ``127.0.0.1:upstream_port``; ``fail(status, count)`` answers the next requests itself."""

    daemon_threads = True

    def __init__(self, upstream_port: int, error_body: ErrorBody) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream_port = upstream_port
        self.error_body = error_body
        self.requests: list[Seen] = []
        self.failed = 0
        self._status = 503
        self._left = 0
        self._skip = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, status: int, count: int, after: int = 0) -> None:
        """Answer ``count`` requests with ``status`` (DROP: no answer) once ``after`` more have passed."""
        with self._lock:
            self._status, self._left, self._skip = status, count, after

    def next_fault(self) -> int | None:
        with self._lock:
            if self._left <= 0:
                return None
            if self._skip:
                self._skip -= 1
                return None
            self._left -= 1
            self.failed += 1
            return self._status

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append(Seen(method, path, status))

    def serve_in_background(self) -> FaultProxy:
        threading.Thread(target=self.serve_forever, name="fault proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so that "Expect: 100-continue" is answered at once
    server: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        body = self._read_body()
        fault = self.server.next_fault()
        self.close_connection = True
        if fault == DROP:
            self.server.record(self.command, self.path, DROP)
            return
        if fault is not None:
            self.server.record(self.command, self.path, fault)
            self._answer_error(fault)
            return
        self._forward(body)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _handle

    def _read_body(self) -> bytes | None:
        if "Content-Length" in self.headers:
            return self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return None

    def _answer_error(self, status: int) -> None:
        headers, data = self.server.error_body(status)
        data = b"" if self.command == "HEAD" else data
        self.send_response_only(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _forward(self, body: bytes | None) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_HEADERS:
                    upstream.putheader(name, value)
            if body is not None and "Content-Length" not in self.headers:
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.server.record(self.command, self.path, answer.status)
        self.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                self.send_header(name, value)
        # a HEAD answer keeps the object's Content-Length; every other one has its body's
        length = answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
