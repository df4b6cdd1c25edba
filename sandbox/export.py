"""`GET /api/2.0/export`: Mixpanel's Raw Event Export with auth, rate limits, filters and faults."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from sandbox.auth import authenticate
from sandbox.cache import ensure_cached, ensure_gzipped
from sandbox.config import ProjectConfig
from sandbox.data import SMALL_DAY, day_lines, iter_day_lines, split_line
from sandbox.faults import MALFORMED_LINE, Fault, Quirk, split_record
from sandbox.routing import Request, Response, error, route
from sandbox.state import SandboxState
from sandbox.stream import ChunkedBody, Dropped
from sandbox.where import Predicate, WhereError, parse_where

FILE_CHUNK = 1 << 20
WRITE_BATCH = 1 << 18
MAX_LIMIT = 100_000
RATE_LIMITED = "too many export requests in progress for this project"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Written when a partial_last_line fault has no next line left to cut in half.
_FALLBACK_PARTIAL = b'{"event":"$mp_web_page_view","properties":{"time":1700000000,"distinct_id":"x"}}'


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class ExportParams:
    from_date: date
    to_date: date
    events: frozenset[bytes] | None = None
    where: Predicate | None = None
    limit: int | None = None

    @property
    def plain(self) -> bool:
        return self.events is None and self.where is None and self.limit is None

    def days(self) -> Iterator[date]:
        day = self.from_date
        while day <= self.to_date:
            yield day
            day += timedelta(days=1)


def parse_date(query: dict[str, str], name: str) -> date:
    value = query.get(name)
    if not value:
        raise BadRequest(f"'{name}' is a required parameter")
    try:
        if not _DATE.match(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(f"invalid {name} {value!r}: expected yyyy-mm-dd") from exc


def _parse_events(raw: str | None) -> frozenset[bytes] | None:
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest("event must be a JSON array of event names")
    return frozenset(n.encode() for n in names)


def _parse_limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_LIMIT}")
    return int(raw)


def processed_by(cut: int) -> Predicate:
    """Events Mixpanel has processed by ``cut`` (epoch ms): what an export made at that moment sees."""
    return lambda props: float(props.get("mp_processing_time_ms", 0)) <= cut


def _until(params: ExportParams, cut: int | None) -> ExportParams:
    if cut is None:
        return params
    where, visible = params.where, processed_by(cut)
    combined = visible if where is None else (lambda props: visible(props) and where(props))
    return dataclasses.replace(params, where=combined)


def parse_params(query: dict[str, str], cfg: ProjectConfig) -> ExportParams:
    from_date, to_date = parse_date(query, "from_date"), parse_date(query, "to_date")
    if from_date > to_date:
        raise BadRequest("from_date cannot be later than to_date")
    # "Today" is in UTC or in the project timezone: a wrong client timezone setting surfaces here.
    if to_date > cfg.current_day():
        raise BadRequest("to_date cannot be later than today")
    where = None
    if query.get("where"):
        try:
            where = parse_where(query["where"])
        except WhereError as exc:
            raise BadRequest("invalid where expression") from exc
    events = _parse_events(query.get("event"))
    return ExportParams(from_date, to_date, events, where, _parse_limit(query.get("limit")))


class _Selector:
    """Applies the event/where filters and the `limit` cap across all days of one request."""

    def __init__(self, params: ExportParams) -> None:
        self.params = params
        self.remaining = params.limit

    def wants(self, line: bytes) -> bool:
        name, props = split_line(line)
        if self.params.events is not None and name not in self.params.events:
            return False
        return self.params.where is None or self.params.where(json.loads(props))

    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def take(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


def _file_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb", buffering=FILE_CHUNK) as f:
        for raw in f:
            yield raw[:-1]


def _source(cfg: ProjectConfig, day: date) -> Iterable[bytes]:
    if cfg.cache_dir is not None:
        return _file_lines(ensure_cached(cfg, day))
    if cfg.events_per_day <= SMALL_DAY:
        return day_lines(cfg, day)
    return iter_day_lines(cfg, day)


def day_source(state: SandboxState, day: date) -> Iterable[bytes]:
    """One day's lines before filters: generated (or cached), with late events and deletions applied."""
    lines = _source(state.cfg, day)
    if state.changes.touched(day):
        return state.changes.lines(state.cfg, day, lines)
    return lines


def _physical_lines(state: SandboxState, day: date, quirks: list[Quirk], sel: _Selector) -> Iterator[bytes]:
    """One day's lines as they go on the wire: filtered, capped, with malformed/split quirks applied."""
    malformed = {q.index for q in quirks if q.kind == "malformed_line"}
    split = {q.index for q in quirks if q.kind == "split_record"}
    check = not sel.params.plain
    for i, line in enumerate(day_source(state, day)):
        if sel.exhausted():
            return
        if i in malformed:
            yield MALFORMED_LINE
        if check and not sel.wants(line):
            continue
        sel.take()
        if i in split:
            yield from split_record(line)
        else:
            yield line


def _write_lines(lines: Iterable[bytes], body: ChunkedBody, fault: Fault | None) -> None:
    stop_at = fault.after_lines if fault is not None and fault.needs_lines else None
    batch: list[bytes] = []
    size = 0
    tail: bytes | None = None
    for written, line in enumerate(lines):
        if stop_at is not None and written >= stop_at:
            tail = line
            break
        batch.append(line)
        size += len(line) + 1
        if size >= WRITE_BATCH:
            body.write(b"\n".join(batch) + b"\n")
            batch, size = [], 0
    if batch:
        body.write(b"\n".join(batch) + b"\n")
    if fault is not None and fault.kind == "terminated_early":
        # Mixpanel ends some 200 responses with this plain-text line instead of the remaining data.
        body.write(fault.text.encode() + b"\n")
    elif fault is not None and fault.kind == "partial_last_line":
        cut = tail if tail is not None else _FALLBACK_PARTIAL
        body.write(cut[: len(cut) // 2])


def _write_file(path: Path, body: ChunkedBody) -> None:
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(FILE_CHUNK):
            body.write(chunk)


def _stream(state: SandboxState, params: ExportParams, fault: Fault | None, body: ChunkedBody) -> None:
    cfg = state.cfg
    per_line = not params.plain or (fault is not None and fault.needs_lines)
    sel = _Selector(params)

    def slow_days() -> Iterator[bytes]:
        for day in params.days():
            yield from _physical_lines(state, day, state.faults.quirks_for(day), sel)

    if per_line:
        _write_lines(slow_days(), body, fault)
        return
    for day in params.days():
        quirks = state.faults.quirks_for(day)
        if cfg.cache_dir is not None and not quirks and not state.changes.touched(day):
            _write_file(ensure_cached(cfg, day), body)  # fast path: file bytes, no per-line work
        else:
            _write_lines(_physical_lines(state, day, quirks, sel), body, None)


def _fault_response(fault: Fault) -> Response:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    if isinstance(fault.body, str):
        return Response(fault.code, fault.body.encode(), "text/plain; charset=utf-8", headers)
    payload = fault.body if fault.body is not None else {"error": f"sandbox fault: HTTP {fault.code}"}
    return Response(fault.code, json.dumps(payload).encode(), "application/json", headers)


def _abort(req: Request) -> None:
    req.handler.close_connection = True
    with contextlib.suppress(OSError):
        req.handler.connection.shutdown(socket.SHUT_RDWR)


def _precompressed(state: SandboxState, params: ExportParams, fault: Fault | None) -> Path | None:
    """The cached gzip body of a plain request that no fault, quirk or change touches, if asked for."""
    cfg = state.cfg
    if not cfg.gzip_cached or cfg.cache_dir is None or not params.plain or fault is not None:
        return None
    days = list(params.days())
    if any(state.faults.quirks_for(day) or state.changes.touched(day) for day in days):
        return None
    return ensure_gzipped(cfg, days)


def _send_stream(req: Request, params: ExportParams, fault: Fault | None) -> None:
    state, handler = req.state, req.handler
    gzip = state.cfg.gzip and "gzip" in req.headers.get("Accept-Encoding", "").lower()
    cached = _precompressed(state, params, fault) if gzip else None
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Transfer-Encoding", "chunked")
    if gzip:
        handler.send_header("Content-Encoding", "gzip")
    handler.end_headers()
    drop = fault.bytes if fault is not None and fault.kind == "drop_after_bytes" else None
    body = ChunkedBody(
        handler.wfile, gzip=gzip and cached is None, drop_after=drop, on_bytes=state.stats.add_bytes
    )
    try:
        if cached is not None:
            _write_file(cached, body)  # compressed already: sent as it is
        else:
            _stream(state, params, fault, body)
        body.finish()
    except Dropped:
        _abort(req)


def _log_entry(req: Request) -> dict[str, object]:
    keys = ("from_date", "to_date", "event", "where", "limit", "project_id")
    return {"t": time.monotonic(), **{k: req.query[k] for k in keys if k in req.query}}


def _admitted(req: Request, params: ExportParams, entry: dict[str, object]) -> Response | None:
    state = req.state
    fault = state.faults.take()
    entry["fault"] = fault.kind if fault is not None else None
    if fault is not None and fault.kind == "slow_first_byte":
        time.sleep(fault.seconds)  # Mixpanel can take minutes before the first byte of a big export
    if fault is not None and fault.kind == "status":
        response = _fault_response(fault)
        state.stats.response(response.status, entry)
        return response
    state.stats.response(200, entry)
    _send_stream(req, params, fault)
    return None


def _checked(req: Request) -> tuple[ExportParams | None, Response | None]:
    problem = authenticate(req)
    if problem is not None:
        return None, problem
    try:
        params = _until(parse_params(req.query, req.state.cfg), req.state.processed_until_ms)
    except BadRequest as exc:
        return None, error(400, str(exc))
    if not req.state.limiter.acquire():
        return None, error(429, RATE_LIMITED, {"Retry-After": "1"})
    return params, None


@route("GET", "/api/2.0/export")
def export(req: Request) -> Response | None:
    stats = req.state.stats
    stats.begin()
    entry = _log_entry(req)
    try:
        params, problem = _checked(req)
        if params is None:
            assert problem is not None
            stats.response(problem.status, entry)
            return problem
        try:
            return _admitted(req, params, entry)
        finally:
            req.state.limiter.release()
    finally:
        stats.end()
