"""Engage query parameters, paging sessions and the selected profile indexes.

Mixpanel's Engage pages through one server-side result set: page 0 returns a `session_id` and later pages
must send it back. The sandbox's session ids are deterministic (a hash of the config and the query), so
the same query always gets the same id; the store only remembers which ids were handed out, so an id
that was never issued is rejected like Mixpanel rejects an expired one. Sessions survive `reset()`.
"""

from __future__ import annotations

import json
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from weakref import WeakKeyDictionary

import xxhash

from sandbox.config import ProjectConfig
from sandbox.people import match_indexes, people_model
from sandbox.people_where import WhereError, parse_atoms
from sandbox.state import SandboxState

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
MAX_SESSIONS = 10_000


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class Query:
    """What defines a result set (and therefore a session)."""

    where: str | None = None
    output_properties: tuple[str, ...] | None = None
    distinct_ids: tuple[str, ...] | None = None

    @property
    def wanted(self) -> frozenset[str] | None:
        return None if self.output_properties is None else frozenset(self.output_properties)


@dataclass(frozen=True)
class PageRequest:
    query: Query
    session_id: str | None
    page: int
    page_size: int


def _names(params: dict[str, str], key: str) -> tuple[str, ...] | None:
    raw = params.get(key)
    if raw is None or raw == "":
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest(f"{key} must be a JSON array of strings")
    return tuple(names)


def parse_query(params: dict[str, str]) -> Query:
    where = params.get("where") or None
    if where is not None:
        try:
            parse_atoms(where)
        except WhereError as exc:
            raise BadRequest("invalid where expression") from exc
    ids = _names(params, "distinct_ids")
    if ids is None and params.get("distinct_id"):
        ids = (params["distinct_id"],)  # the single-id form Mixpanel also accepts
    return Query(where, _names(params, "output_properties"), ids)


def _int(params: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = params.get(key) or str(default)
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{key} must be an integer between {low} and {high}")
    return int(raw)


def parse_page_request(params: dict[str, str]) -> PageRequest:
    # filter_by_cohort is accepted and ignored: the sandbox has no cohorts.
    page = _int(params, "page", 0, 0, 10**12)
    size = _int(params, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    return PageRequest(parse_query(params), params.get("session_id") or None, page, size)


def session_id(cfg: ProjectConfig, query: Query) -> str:
    parts = (cfg.seed, cfg.events_per_day, cfg.identity_mode, cfg.profiles, cfg.anonymous_profiles, query)
    return xxhash.xxh3_128_hexdigest(repr(parts).encode())


class SessionStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queries: dict[str, Query] = {}

    def open(self, cfg: ProjectConfig, query: Query) -> str:
        sid = session_id(cfg, query)
        with self._lock:
            if sid not in self._queries and len(self._queries) >= MAX_SESSIONS:
                self._queries.pop(next(iter(self._queries)))  # oldest first, like an expiry
            self._queries[sid] = query
        return sid

    def get(self, sid: str) -> Query | None:
        with self._lock:
            return self._queries.get(sid)


_STORES: WeakKeyDictionary[SandboxState, SessionStore] = WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def sessions(state: SandboxState) -> SessionStore:
    with _STORES_LOCK:
        store = _STORES.get(state)
        if store is None:
            store = _STORES[state] = SessionStore()
        return store


@dataclass(frozen=True)
class Selection:
    """The profile indexes of one result set; `indexes` is None when every profile is selected."""

    total: int
    indexes: array[int] | None

    def page(self, page: int, size: int) -> Sequence[int]:
        start = page * size
        if start >= self.total:
            return ()
        stop = min(start + size, self.total)
        return range(start, stop) if self.indexes is None else self.indexes[start:stop]


@lru_cache(maxsize=32)
def selection(cfg: ProjectConfig, query: Query) -> Selection:
    """Computed once per session: a `where` needs a full scan anyway to report `total` on page 0."""
    if query.where is None and query.distinct_ids is None:
        return Selection(people_model(cfg).total, None)
    indexes = array("q", match_indexes(cfg, query.where, query.distinct_ids))
    return Selection(len(indexes), indexes)
