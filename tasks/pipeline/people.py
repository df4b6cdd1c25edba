"""The people table: every Engage profile, streamed page by page, swapped in whole.

Each page's ``results`` are streamed with ijson (the page document is never loaded whole) and each
``$properties`` object is re-encoded with every key, in order, with its numbers' exact digits
(ijson yields Decimal; msgspec writes Decimal and big integers back as plain JSON numbers).
Mixpanel quirks: ``total`` is reliable only on page 0; the ``session_id`` of page 0 must be sent
with every later page, which may then be fetched concurrently; paging goes on while pages are full.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ijson
import msgspec
import polars as pl

from tasks.errors import RetriableError
from tasks.lake.commit import ObjectStoreDestination
from tasks.lake.tables import replace_table
from tasks.mixpanel.client import MixpanelClient, RetryStats
from tasks.pipeline.exclude import id_rows_of
from tasks.schema import PEOPLE_SCHEMA, PEOPLE_TABLE

ENCODER = msgspec.json.Encoder(decimal_format="number")
BACKENDS = ("yajl2_c", "python")  # yajl's C parser, with the exact pure-python one as a fallback


@dataclass(frozen=True)
class EngageQuery:
    page_size: int = 1000
    where: str | None = None
    output_properties: tuple[str, ...] = ()

    def form(self, page: int, session_id: str | None) -> dict[str, str]:
        form = {"page": str(page), "page_size": str(self.page_size)}
        if session_id:
            form["session_id"] = session_id
        if self.where:
            form["where"] = self.where
        if self.output_properties:
            form["output_properties"] = json.dumps(list(self.output_properties))
        return form


@dataclass
class Page:
    number: int
    ids: list[str] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)
    session_id: str | None = None
    total: int | None = None

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame({"distinct_id": self.ids, "properties": self.properties}, schema=PAGE_SCHEMA)


PAGE_SCHEMA = {"distinct_id": pl.String, "properties": pl.String}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ENCODER.encode(value).decode()


def parse_page(number: int, chunks: Iterator[bytes], backend: str = "yajl2_c") -> Page:
    """Stream one Engage page: profiles from ``results``, plus ``session_id`` and ``total`` on page 0
    (later pages reuse page 0's session, and their ``total`` is not reliable anyway)."""
    parser = ijson.get_backend(backend)
    profiles, session, total = ijson.sendable_list(), ijson.sendable_list(), ijson.sendable_list()
    # use_float=False: floats come as Decimal (exact digits) and yajl keeps big integers exact
    coros = [parser.items_coro(profiles, "results.item", use_float=False)]
    if number == 0:  # each coroutine parses the whole page: only page 0 pays for the metadata
        coros += [parser.items_coro(session, "session_id"), parser.items_coro(total, "total")]
    page = Page(number)
    for chunk in chunks:
        for coro in coros:
            coro.send(chunk)
        _take(page, profiles)
    for coro in coros:
        coro.close()
    _take(page, profiles)
    page.session_id = str(session[0]) if session else None
    page.total = int(total[0]) if total and isinstance(total[0], int | Decimal) else None
    return page


def _take(page: Page, profiles: list[Any]) -> None:
    for item in profiles:
        page.ids.append(_text(item["$distinct_id"]))
        page.properties.append(ENCODER.encode(item.get("$properties", {})).decode())
    profiles.clear()


def fetch_page(client: MixpanelClient, query: EngageQuery, number: int, session_id: str | None) -> Page:
    """One page, retried whole; re-read with the exact pure-python parser if yajl overflows."""
    stats = RetryStats()

    def attempt() -> Page:
        for backend in BACKENDS:
            with client.engage(query.form(number, session_id)) as chunks:
                try:
                    return parse_page(number, chunks, backend)
                except ijson.IncompleteJSONError as exc:
                    if "integer overflow" in str(exc) and backend != BACKENDS[-1]:
                        continue
                    raise RetriableError(
                        f"the Engage page {number} was cut short ({exc}); retrying."
                    ) from exc
        raise AssertionError("unreachable")

    return client.with_retries(attempt, f"Engage page {number}", stats)


@dataclass
class PeopleResult:
    rows: int
    pages: int
    fingerprint: str
    files: int
    bytes: int


def export_people(
    client: MixpanelClient,
    destination: ObjectStoreDestination,
    query: EngageQuery,
    max_concurrent_pages: int = 5,
    flow_run_id: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    excluded_ids: frozenset[str] = frozenset(),
) -> PeopleResult:
    """All profiles into ``mp_people_data``, replaced atomically; any failure leaves the old table."""
    first = fetch_page(client, query, 0, None)
    pages: list[int] = [1]

    def frames() -> Iterator[pl.DataFrame]:
        yield first.frame()
        if len(first.ids) < query.page_size:
            return
        lock = threading.Lock()
        done = [1]

        def one(number: int) -> Page:
            page = fetch_page(client, query, number, first.session_id)
            with lock:
                done[0] += 1
                if progress is not None:
                    progress(done[0], _page_count(first.total, query.page_size))
            return page

        known = _page_count(first.total, query.page_size)
        with ThreadPoolExecutor(max_workers=max(1, max_concurrent_pages)) as pool:
            # pages after 0 are independent once the session exists; results come back in order
            for page in pool.map(one, range(1, known)):
                pages[0] += 1
                yield page.frame()
                last = page
        number = max(known, 1)
        # `total` may be stale: keep going while the last page was full
        while known <= 1 or len(last.ids) >= query.page_size:
            last = fetch_page(client, query, number, first.session_id)
            pages[0] += 1
            yield last.frame()
            if len(last.ids) < query.page_size:
                break
            number += 1

    manifest = replace_table(
        destination,
        PEOPLE_TABLE,
        PEOPLE_SCHEMA,
        _without(frames(), excluded_ids),
        run_id=uuid.uuid4().hex[:12],
        value_column="properties",
        flow_run_id=flow_run_id,
    )
    return PeopleResult(
        manifest.rows,
        pages[0],
        manifest.fingerprint,
        len(manifest.files),
        sum(f.bytes for f in manifest.files),
    )


def _without(frames: Iterator[pl.DataFrame], ids: frozenset[str]) -> Iterator[pl.DataFrame]:
    """Profiles of GDPR-registered ids are never stored, even while Mixpanel still serves them."""
    for frame in frames:
        yield frame.filter(~id_rows_of(ids, ("distinct_id",))) if ids else frame


def _page_count(total: int | None, page_size: int) -> int:
    if not total:
        return 1
    return max(1, -(-total // page_size))
