"""The people table: every Engage profile, streamed page by page, swapped in whole.

A page (``page_size`` profiles, about a megabyte) is decoded whole by msgspec, in C, and each
``$properties`` object is kept as the bytes Mixpanel sent (``msgspec.Raw``): every key in order, every
number in its own form (``6.71445388176323e-05`` stays so, big integers keep every digit), as the
events' ``properties`` are. A page that does not decode, or whose text is not UTF-8, was cut or
corrupted on the way: the page is fetched again.
Mixpanel quirks: ``total`` is reliable only on page 0; the ``session_id`` of page 0 must be sent
with every later page, which may then be fetched concurrently; paging goes on while pages are full.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import polars as pl

from tasks.errors import RetriableError
from tasks.lake.commit import Lake
from tasks.lake.runs import RunIds
from tasks.lake.tables import replace_table
from tasks.mixpanel.client import MixpanelClient, RetryStats
from tasks.pipeline.exclude import id_rows_of
from tasks.schema import PEOPLE_SCHEMA, PEOPLE_TABLE


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


class _Profile(msgspec.Struct, gc=False):
    distinct_id: msgspec.Raw = msgspec.field(default=msgspec.Raw(b"null"), name="$distinct_id")
    properties: msgspec.Raw = msgspec.field(default=msgspec.Raw(b"{}"), name="$properties")


class _Page(msgspec.Struct, gc=False):
    results: list[_Profile] = []
    session_id: Any = None
    total: Any = None


PAGE_DECODER = msgspec.json.Decoder(_Page)
TEXT_DECODER = msgspec.json.Decoder(str)


def _id_text(raw: msgspec.Raw) -> str:
    """A distinct id as text: a string's value, a number's own digits (Mixpanel accepts numeric ids)."""
    text = bytes(raw)
    return TEXT_DECODER.decode(text) if text[:1] == b'"' else text.decode()


def parse_page(number: int, body: bytes) -> Page:
    """One Engage page: profiles from ``results``, plus ``session_id`` and ``total`` (read from page 0;
    later pages reuse page 0's session, and their ``total`` is not reliable anyway)."""
    try:
        decoded = PAGE_DECODER.decode(body)
        ids = [_id_text(p.distinct_id) for p in decoded.results]
        # msgspec does not look inside the raw objects it skips: their text must be UTF-8 all the same
        properties = [bytes(p.properties).decode() for p in decoded.results]
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RetriableError(
            f"the Engage page {number} is not a whole JSON page ({reason}); retrying."
        ) from exc
    total = decoded.total
    return Page(
        number,
        ids,
        properties,
        session_id=str(decoded.session_id) if decoded.session_id is not None else None,
        total=total if isinstance(total, int) and not isinstance(total, bool) else None,
    )


def fetch_page(client: MixpanelClient, query: EngageQuery, number: int, session_id: str | None) -> Page:
    """One page, retried whole."""
    stats = RetryStats()

    def attempt() -> Page:
        with client.engage(query.form(number, session_id)) as chunks:
            return parse_page(number, b"".join(chunks))

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
    lake: Lake,
    query: EngageQuery,
    max_concurrent_pages: int = 5,
    run: RunIds | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    excluded_ids: frozenset[str] = frozenset(),
) -> PeopleResult:
    """All profiles into ``mp_people_data``, replaced atomically; any failure leaves the old table."""
    run = run or RunIds()
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
        lake,
        PEOPLE_TABLE,
        PEOPLE_SCHEMA,
        _without(frames(), excluded_ids),
        run_id=run.run_id,
        value_column="properties",
        flow_run_id=run.flow_run_id,
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
