"""A loopback Mixpanel that answers the export with whatever body a test sets (hostile or good), and
the query API's per-day counts with what the test says Mixpanel counts."""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Body = bytes | Callable[[], Iterable[bytes]]


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body: Body = b""
        self.headers: dict[str, str] = {"Content-Type": "text/plain; charset=utf-8"}
        self.counts: dict[str, dict[str, int]] = {}  # name -> {"YYYY-MM-DD": count}
        self.paths: list[str] = []
        self.echo: Callable[[str, dict[str, str]], tuple[int, bytes]] | None = None  # a proxy's page
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def serve(self, body: Body, **headers: str) -> None:
        self.body = body
        self.headers = {"Content-Type": "text/plain; charset=utf-8"} | {
            k.replace("_", "-"): v for k, v in headers.items()
        }

    def requests_to(self, path: str) -> int:
        return sum(p.startswith(path) for p in self.paths)


class _Handler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: any cut is possible

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.server.echo is not None:  # a proxy's page quoting the request back
            status, page = self.server.echo(self.requestline, dict(self.headers.items()))
            self._answer({"Content-Type": "text/html"}, [page], status)
        elif self.path.startswith("/api/query/events"):
            query = parse_qs(urlsplit(self.path).query)
            names = json.loads(query.get("event", ["[]"])[0])
            values = {n: c for n, c in self.server.counts.items() if n in names}
            body = json.dumps({"data": {"series": [], "values": values}}).encode()
            self._answer({"Content-Type": "application/json"}, [body])
        elif self.path.startswith("/api/2.0/export"):
            served = self.server.body
            self._answer(self.server.headers, [served] if isinstance(served, bytes) else served())
        else:
            self._answer({"Content-Type": "text/plain"}, [b"not found"], 404)

    def _answer(self, headers: dict[str, str], chunks: Iterable[bytes], status: int = 200) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on the body (a bomb, an over-long line): fine


def epoch(day: date, second: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) + second


def event_line(name: str, props: dict[str, Any]) -> bytes:
    return json.dumps({"event": name, "properties": props}, separators=(",", ":")).encode()


def good_lines(day: date, rows: int, names: tuple[str, ...] = ("Sign Up", "Page View")) -> list[bytes]:
    return [
        event_line(
            names[i % len(names)],
            {
                "time": epoch(day, i),
                "distinct_id": f"user-{i % 7}",
                "$insert_id": f"ins-{i}",
                "mp_processing_time_ms": epoch(day, i) * 1000 + 5,
                "city": "Zürich",
            },
        )
        for i in range(rows)
    ]


def counts_of(
    day: date, rows: int, names: tuple[str, ...] = ("Sign Up", "Page View")
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for i in range(rows):
        per_day = out.setdefault(names[i % len(names)], {})
        per_day[day.isoformat()] = per_day.get(day.isoformat(), 0) + 1
    return out


def gzip_bomb(inflated: int, piece: int = 1 << 20) -> Callable[[], Iterator[bytes]]:
    """A gzip stream of ``inflated`` newlines (about a thousandth of that on the wire), compressed
    while it is sent."""

    def body() -> Iterator[bytes]:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b"\n" * piece
        for _ in range(inflated // piece):
            out = packer.compress(block)
            if out:
                yield out
        yield packer.flush()

    return body


def in_pieces(
    parts: Iterable[bytes | tuple[bytes, int]], piece: int = 1 << 20
) -> Callable[[], Iterator[bytes]]:
    """A body streamed in pieces; ``(byte, n)`` stands for ``n`` repetitions of one byte."""

    def body() -> Iterator[bytes]:
        for part in parts:
            if isinstance(part, tuple):
                one, count = part
                full = one * piece
                for _ in range(count // piece):
                    yield full
                yield one * (count % piece)
            else:
                yield part

    return body
