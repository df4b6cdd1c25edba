"""One unit of work of the events pipeline: one export request covering consecutive days.

Stream → parse → split by day → rolling files in a stage → (all went well) commit day by day. The
first three run at once, in threads handing on through bounded queues (``tasks.pipeline.stages``): the
result is the one a single thread gives, and a failure in any of them fails the attempt with its own
sentence, every thread stopped before the attempt's stage is thrown away.
Any retriable failure throws the whole attempt's stage away and starts the request again, so a
day is committed only from one complete, clean response. A response in which every line was rejected
is a failure whatever ``max_rejected_lines`` allows; and a committed day is replaced only under the
rules of ``tasks.pipeline.guard`` (no narrower filter unless forced, no marked shrink unless Mixpanel's count
confirms it or ``allow_shrink``).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

import msgspec
import polars as pl

from tasks.errors import (
    FilterMismatchError,
    MalformedRecordsError,
    PipelineError,
    RetriableError,
    ShrinkRefusedError,
)
from tasks.lake.commit import Lake, Stage
from tasks.lake.daynotes import note_refusals
from tasks.lake.files import FileFormat, PartitionBuffer, RollingFiles
from tasks.lake.manifest import Manifest, fingerprint_hex
from tasks.mixpanel.calendar import ProjectCalendar
from tasks.mixpanel.client import ExportRequest, MixpanelClient, RetryStats, byte_batches, mixpanel_counts
from tasks.pipeline.counts import DedupCounter
from tasks.pipeline.exclude import event_rows_of
from tasks.pipeline.guard import (
    Filter,
    confirm_shrink,
    filter_of,
    filter_refusal,
    held_after,
    recorded_counts,
    shrinks,
)
from tasks.pipeline.identity import IdentityMode, edges_query
from tasks.pipeline.parse import BLOCK_BYTES, MAX_LINE_BYTES, ParsedBlock, Reject, StreamParser
from tasks.pipeline.partition import day_of, day_ordinal, with_time_columns
from tasks.pipeline.stages import Stages
from tasks.schema import EVENT_COLUMNS, EVENTS_TABLE

MAX_REJECTS_KEPT = 10_000


@dataclass(frozen=True)
class ExportSettings:
    run_id: str
    file_format: FileFormat = FileFormat.PARQUET
    max_rejected_lines: int = 0
    # which days Mixpanel means, the epoch it answers in, and whether its counts compare
    calendar: ProjectCalendar = field(default_factory=ProjectCalendar)
    block_bytes: int = BLOCK_BYTES
    max_file_rows: int = 1_000_000
    max_file_bytes: int = 256 << 20
    flow_run_id: str | None = None
    events: tuple[str, ...] = ()
    scratch_dir: Path | None = None
    # ID-merge flavour of the project: the day's merge edges are committed with the day (None: none)
    identity_mode: IdentityMode | None = None
    # ids of the GDPR registry (with their identity clusters): their rows are never stored
    excluded_ids: frozenset[str] = frozenset()
    # a line longer than this is a rejected line (tasks.pipeline.parse)
    max_line_bytes: int = MAX_LINE_BYTES
    # replace a committed day even when the new version is markedly smaller (tasks.pipeline.guard)
    allow_shrink: bool = False
    # replace a committed day even when it was committed with a filter this run's does not cover
    force: bool = False

    @property
    def filter(self) -> Filter:
        return filter_of(self.events)


@dataclass
class DayResult:
    day: date
    rows: int
    files: int
    bytes: int
    fingerprint: str
    rejected_lines: int
    retries: int
    seconds: float
    excluded: int = 0  # rows of GDPR-registered ids left out
    # an hourly increment's new rows (``rows`` is then what the day holds in all); None: replaced whole
    added: int | None = None

    def describe(self) -> str:
        """The run's log line for the day: what this export did to it."""
        held = f"{self.rows} rows in {self.files} file(s), fingerprint {self.fingerprint}"
        if self.added is None:
            return f"{self.day}: {held}"
        return f"{self.day}: {self.added} rows added, day holds {held}"

    def as_row(self) -> dict[str, object]:
        added = {} if self.added is None else {"rows added": self.added}
        return {
            "day": self.day.isoformat(),
            **added,
            "rows": self.rows,
            "files": self.files,
            "bytes": self.bytes,
            "rejected lines": self.rejected_lines,
            "excluded (GDPR)": self.excluded,
            "retries": self.retries,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class _Day:
    files: RollingFiles
    edges: RollingFiles
    counter: DedupCounter
    rows: int = 0
    hash_sum: int = 0
    max_ptime: int | None = None
    excluded: int = 0
    last_block: int = 0  # the parse block that last brought rows of this day
    open: bool = False  # holds buffered frames, an open file or keys in memory


@dataclass
class _Attempt:
    stage: Stage
    days: dict[int, _Day]
    buffer: PartitionBuffer
    # the file writes (and seals) the last block asked for, in order: the writing thread does them, so
    # the files (and the stage's uploads they start) are only ever touched by that one thread
    writes: list[Callable[[], None]]
    edges: PartitionBuffer  # the days' merge edges: a few rows a block, written in batches
    rejects: list[Reject] = field(default_factory=list)
    rejected: int = 0
    accepted: int = 0  # records decoded, wherever they belong
    label: str = ""  # the request's days, for messages
    blocks: int = 0  # parse blocks taken so far


def processed_after(watermark: int) -> str:
    """Mixpanel's ``where`` for events it processed after ``watermark`` (epoch ms)."""
    return f'number(properties["mp_processing_time_ms"]) > {int(watermark)}'


def export_days(
    client: MixpanelClient,
    lake: Lake,
    days: list[date],
    settings: ExportSettings,
    base: Manifest | None = None,
) -> list[DayResult]:
    """Export ``days`` (consecutive) with one request, retried whole, and commit each day.

    With ``base`` (the committed manifest of the single day in ``days``), only the events Mixpanel
    processed after its watermark are exported and added to the day as new files: an hourly
    increment. Without it, each day is replaced whole.
    """
    started = time.monotonic()
    # Long-lived objects (Prefect, pydantic, polars) would be re-scanned by every full collection
    # while the parser allocates millions of short-lived ones; freezing them makes those cheap.
    gc.freeze()
    where = None
    if base is not None:
        assert len(days) == 1 and base.partition == days[0].isoformat(), "an increment covers its one day"
        where = processed_after(base.max_processing_time_ms or 0)
    request = ExportRequest(days[0], days[-1], events=settings.events, where=where)
    what = f"export {days[0]}..{days[-1]}"
    stats = RetryStats()
    with tempfile.TemporaryDirectory(prefix="mp-export-", dir=settings.scratch_dir) as scratch:

        def attempt() -> _Attempt:
            stage = lake.open_stage(EVENTS_TABLE, f"{settings.run_id}-{days[0]:%Y%m%d}-a{stats.attempts}")
            try:
                return _stream(client, request, stage, days, settings, Path(scratch))
            except BaseException:
                stage.abort()
                raise

        counts = _count_source(client, settings)
        if base is not None:  # an increment that lost its base is exported again by the next run
            result = client.with_retries(attempt, what, stats)
            _keep_rejects(lake, result, days, settings)
            return _commit(lake, result, days, settings, stats, time.monotonic() - started, base, counts)

        def attempt_and_commit() -> list[DayResult]:
            result = attempt()
            _keep_rejects(lake, result, days, settings)
            try:
                return _commit(lake, result, days, settings, stats, time.monotonic() - started, None, counts)
            except RetriableError:  # e.g. another run committed a day first: retried from its version
                result.stage.abort()
                raise

        return client.with_retries(attempt_and_commit, what, stats)


CountSource = Callable[[list[date], set[str]], dict[date, dict[str, int]]]


def _count_source(client: MixpanelClient, settings: ExportSettings) -> CountSource | None:
    """Mixpanel's deduplicated count of some event names per day (None: its days are not ours)."""
    if not settings.calendar.counts_comparable:
        return None

    def count(days: list[date], names: set[str]) -> dict[date, dict[str, int]]:
        return {day: dict(c) for day, c in mixpanel_counts(client, days, names).items()}

    return count


def _stream(
    client: MixpanelClient,
    request: ExportRequest,
    stage: Stage,
    days: list[date],
    settings: ExportSettings,
    scratch: Path,
) -> _Attempt:
    partitions = {day_ordinal(d): _day_files(stage, d.isoformat(), settings, scratch) for d in days}
    writes: list[Callable[[], None]] = []

    def ask_write(files: RollingFiles, frame: pl.DataFrame) -> None:
        # converted here, in the splitting thread: the writing thread only writes (tasks.lake.files)
        writes.append(partial(files.write_rows, files.rows_of(frame)))

    buffer = PartitionBuffer({k: d.files for k, d in partitions.items()}, write=ask_write)
    edges = PartitionBuffer({k: d.edges for k, d in partitions.items()}, EDGE_BUFFER_BYTES, write=ask_write)
    state = _Attempt(stage, partitions, buffer, writes, edges)
    state.label = str(days[0]) if len(days) == 1 else f"{days[0]}..{days[-1]}"
    parser = StreamParser(settings.block_bytes, settings.max_line_bytes)
    try:
        # four threads: the body read and inflated, its lines parsed into frames, the frames split by
        # day and counted, and here the Parquet files written (tasks.pipeline.stages); closing the
        # stages stops and joins them
        with client.export(request) as body, Stages() as stages:
            read = stages.ahead(
                byte_batches(body, HANDOFF_BYTES), "read", READ_AHEAD, interrupt=body.interrupt
            )
            blocks = stages.ahead(_parsed(read, parser), "parse", PARSE_AHEAD)
            for write in stages.ahead(_split(state, blocks, settings), "split", WRITE_AHEAD):
                write()
    except BaseException:
        for day in partitions.values():
            day.files.abort()
            day.edges.abort()
        raise
    for day in partitions.values():
        day.files.close()  # the last files go to the uploader too
        day.edges.close()
    stage.wait()
    return state


# the reader hands the parser about this many bytes at a time (a few reads or inflate steps): few
# hand-offs between threads; it may be READ_AHEAD of them ahead, the parser PARSE_AHEAD blocks ahead
# of the splitter: with 8 MiB blocks, some 8 MiB of body and one block's frame waiting in the queues
# (a 3M-event day peaked at 485 MiB with 16 and 2, 436 MiB at most in its steady state)
HANDOFF_BYTES = 1 << 20
READ_AHEAD = 8
PARSE_AHEAD = 1
WRITE_AHEAD = 1  # a write holds a row group's frames (up to tasks.lake.files.ROW_GROUP_BYTES)
# the merge edges held before they are written: a few rows a block, so written in batches (each write
# is a wait for the GIL in the writing thread), and memory does not grow with the day
EDGE_BUFFER_BYTES = 1 << 20


def _split(
    state: _Attempt, blocks: Iterator[ParsedBlock], settings: ExportSettings
) -> Iterator[Callable[[], None]]:
    """Each block split by day, counted and buffered; the file writes it calls for, in order."""
    for block in blocks:
        _take(state, block, settings)
        yield from _drain(state.writes)
    if state.rejected and not state.accepted:
        first = state.rejects[0]
        raise MalformedRecordsError(
            f"export {state.label}: every one of the {state.rejected} record line(s) of the response was "
            "rejected, first at "
            f"{_where(first)}: {first.error}; a response without one usable record is a failure whatever "
            "max_rejected_lines allows, and the previous data is unchanged."
        )
    state.buffer.flush_all()
    state.edges.flush_all()
    yield from _drain(state.writes)


def _drain(writes: list[Callable[[], None]]) -> Iterator[Callable[[], None]]:
    taken = writes[:]
    writes.clear()
    yield from taken


def _parsed(batches: Iterator[list[bytes]], parser: StreamParser) -> Iterator[ParsedBlock]:
    for batch in batches:
        for chunk in batch:
            yield from parser.feed(chunk)
    yield from parser.finish()


def _day_files(stage: Stage, partition: str, settings: ExportSettings, scratch: Path) -> _Day:
    """A day's rolling data and edge files; each finished file is uploaded while the next is written."""
    folder = stage.directory(partition, scratch)
    return _Day(
        RollingFiles(
            folder,
            settings.file_format,
            settings.max_file_rows,
            settings.max_file_bytes,
            on_close=lambda written: stage.add_soon(partition, written),
        ),
        RollingFiles(
            folder / "edges",
            schema=None,
            on_close=lambda written: stage.add_soon(partition, written, edges=True),
        ),
        # the keys go to local scratch, never to the stage (which may be a bucket)
        DedupCounter(scratch / f"{stage.run_id}-keys" / partition),
    )


# Mixpanel promises no order, but serves a multi-day export roughly day after day. A day that brought
# no row in this many parse blocks (some 32 MiB of other days) is sealed: its frames written, its
# file finished, its dedup keys spilled to scratch, so a request of 30 days holds one or two days'
# state in memory, not 30. A late row of a sealed day opens another file of that day.
IDLE_BLOCKS = 4


def _seal_idle(state: _Attempt) -> None:
    for ordinal, day in state.days.items():
        if day.open and state.blocks - day.last_block > IDLE_BLOCKS:
            state.buffer.flush(ordinal)
            state.edges.flush(ordinal)
            state.writes += [day.files.seal, day.edges.seal]  # after the day's last writes
            day.counter.spill()
            day.open = False


def _take(state: _Attempt, block: ParsedBlock, settings: ExportSettings) -> None:
    _reject(state, block.rejects, settings)
    state.blocks += 1
    if len(state.days) > 1:
        _seal_idle(state)
    if block.frame.height == 0:
        return
    state.accepted += block.frame.height
    frame = with_time_columns(block.frame, settings.calendar.local_zone)
    for ordinal, part in _by_day(frame):
        day = state.days.get(ordinal)
        if day is None:
            _reject(state, _outside(part, ordinal), settings)
            continue
        day.last_block, day.open = state.blocks, True
        _take_day(state, day, ordinal, part, settings)


def _by_day(frame: pl.DataFrame) -> Iterator[tuple[int, pl.DataFrame]]:
    # a block seldom spans two days: it is then taken whole, without a copy by partition_by
    days = frame["_day"]
    if days.min() == days.max():
        yield int(days[0]), frame
        return
    for (ordinal,), part in frame.partition_by("_day", as_dict=True, maintain_order=False).items():
        yield int(ordinal), part


def _take_day(state: _Attempt, day: _Day, ordinal: int, part: pl.DataFrame, settings: ExportSettings) -> None:
    """One day's rows of a block counted, summed and buffered with their merge edges: one call into
    polars for all of it (each call releases the GIL and waits to take it back behind the parser)."""
    kept = part
    if settings.excluded_ids:
        kept = part.filter(~event_rows_of(settings.excluded_ids))  # Mixpanel still counts their rows
    queries = [
        *DedupCounter.queries(part.lazy()),
        _sums_query(kept),
        kept.lazy().select(EVENT_COLUMNS),
    ]
    if settings.identity_mode is not None:
        queries.append(edges_query(kept, settings.identity_mode))
    plain, keys, names, sums, rows, *edges = pl.collect_all(queries)
    day.counter.take(plain, keys, names)
    day.excluded += part.height - kept.height
    day.rows += kept.height
    low, high, ptime = sums.row(0)
    day.hash_sum += int(low) + (int(high) << 32)
    if ptime is not None:
        day.max_ptime = max(day.max_ptime or 0, ptime)
    state.buffer.add(ordinal, rows)
    if edges and edges[0].height:
        state.edges.add(ordinal, edges[0])


def _sums_query(rows: pl.DataFrame) -> pl.LazyFrame:
    """The exact sum of the rows' hashes (``low + high << 32``: halves of 32 bits summed as u64 cannot
    overflow below 2**32 rows) and the latest processing time."""
    return rows.lazy().select(
        (pl.col("_hash") % (1 << 32)).sum().alias("low"),
        (pl.col("_hash") // (1 << 32)).sum().alias("high"),
        pl.col("_ptime").max().alias("ptime"),
    )


def _outside(part: pl.DataFrame, ordinal: int) -> list[Reject]:
    # Mixpanel filtered on these dates itself, so a row outside them means our time mode is wrong.
    why = (
        f"time falls on {day_of(ordinal)}, outside the requested days: check time_mode and project_timezone "
        "in the MixpanelCredentials block"
    )
    return [Reject(0, why, p[:200]) for p in part["properties"].head(100).to_list()] + [
        Reject(0, why, "") for _ in range(max(part.height - 100, 0))
    ]


def _reject(state: _Attempt, rejects: list[Reject], settings: ExportSettings) -> None:
    if not rejects:
        return
    state.rejected += len(rejects)
    room = MAX_REJECTS_KEPT - len(state.rejects)
    state.rejects.extend(rejects[: max(room, 0)])
    if state.rejected > settings.max_rejected_lines:
        first = state.rejects[0]
        raise MalformedRecordsError(
            f"export {state.label}: {state.rejected} malformed or misplaced record(s) (more than max_rejected_lines="
            f"{settings.max_rejected_lines}), first at {_where(first)}: {first.error}; the previous data is "
            "unchanged: see the rejects file and fix the source or raise max_rejected_lines."
        )


def _where(reject: Reject) -> str:
    return f"line {reject.line}" if reject.line else "a line"


def _keep_rejects(lake: Lake, state: _Attempt, days: list[date], settings: ExportSettings) -> None:
    if not state.rejects:
        return
    body = msgspec.json.Encoder().encode_lines(
        [{"line": r.line, "error": r.error, "text": r.text} for r in state.rejects]
    )
    lake.put_rejects(EVENTS_TABLE, f"{days[0]}_{days[-1]}.{settings.run_id}", body)


def _commit(
    lake: Lake,
    state: _Attempt,
    days: list[date],
    settings: ExportSettings,
    stats: RetryStats,
    seconds: float,
    base: Manifest | None,
    counts: CountSource | None = None,
) -> list[DayResult]:
    results = []
    exported_at = datetime.now(tz=UTC).isoformat(timespec="seconds")
    events, where = settings.filter
    tallies = {ordinal: day.counter.counts() for ordinal, day in state.days.items()}
    mismatched, refused, confirmed = (
        ({}, {}, set()) if base is not None else _refusals(lake, state, settings, tallies, counts)
    )
    for ordinal in sorted(state.days):
        day = state.days[ordinal]
        partition = day_of(ordinal).isoformat()
        if ordinal in mismatched or ordinal in refused:
            continue
        manifest = Manifest(
            table=EVENTS_TABLE,
            partition=partition,
            files=(),
            rows=day.rows,
            fingerprint=fingerprint_hex(day.hash_sum),
            format=FileFormat(settings.file_format).value,
            run_id=settings.run_id,
            flow_run_id=settings.flow_run_id,
            exported_at=exported_at,
            max_processing_time_ms=day.max_ptime,
            rejected_lines=state.rejected,
            source_from_date=days[0].isoformat(),
            source_to_date=days[-1].isoformat(),
            time_mode=settings.calendar.time_mode.value,
            timezone=settings.calendar.day_zone,
            event_counts=tallies[ordinal],
            event_names=events,
            where=where,
            # an increment's memory is the base's, carried by tasks.lake.manifest.combined
            held_most=held_after(state.stage.base(partition)[0], day.rows, ordinal in confirmed),
        )
        if base is None:
            final = lake.commit(state.stage, partition, manifest)
        elif day.rows == 0:
            final = base  # nothing new since the watermark: the day stays byte-identical
        else:
            final = lake.append(state.stage, partition, manifest, base)
        results.append(
            DayResult(
                day=day_of(ordinal),
                rows=final.rows,
                files=len(final.files),
                bytes=sum(f.bytes for f in final.files),
                fingerprint=final.fingerprint,
                rejected_lines=state.rejected,
                retries=stats.retries,
                seconds=seconds,
                excluded=day.excluded,
                added=None if base is None else day.rows,
            )
        )
    state.stage.abort()  # drops the emptied staging folders (and the files of refused days)
    # what the sync status shows (tasks.sync.status)
    note_refusals(
        lake, {day_of(o).isoformat(): why for o, why in (mismatched | refused).items()}, exported_at
    )
    if mismatched:
        raise FilterMismatchError("; ".join(mismatched.values()) + ".")
    if refused:
        raise ShrinkRefusedError("; ".join(refused.values()) + ".")
    return results


def _refusals(
    lake: Lake,
    state: _Attempt,
    settings: ExportSettings,
    tallies: dict[int, dict[str, int]],
    counts: CountSource | None,
) -> tuple[dict[int, str], dict[int, str], set[int]]:
    """The days this export may not replace (tasks.pipeline.guard): filter mismatches and unconfirmed shrinks,
    each with its sentence, and the days whose smaller size was confirmed or allowed (their memory of
    the most rows held restarts from the new size). Every shrinking day of the request is checked with
    one query request."""
    mismatched: dict[int, str] = {}
    shrinking: dict[int, tuple[Manifest, set[str]]] = {}
    for ordinal, day in state.days.items():
        when = day_of(ordinal).isoformat()
        committed = lake.manifest(EVENTS_TABLE, when)
        if committed is None:
            continue
        why = None if settings.force else filter_refusal(when, committed, settings.filter)
        if why is not None:
            mismatched[ordinal] = why
        elif not settings.allow_shrink and shrinks(committed, day.rows):
            recorded = set(recorded_counts(lake, committed))
            # a filtered run answers for the events of its filter only
            required = recorded & set(settings.events) if settings.events else recorded
            shrinking[ordinal] = (committed, required)
    refused: dict[int, str] = {}
    everything = set(state.days) - set(mismatched)
    if not shrinking:
        return mismatched, refused, everything if settings.allow_shrink else set()
    theirs: dict[date, dict[str, int]] | PipelineError | None = None
    if counts is not None:
        try:
            names = set(settings.events) or set().union(
                *(set(tallies[o]) | required for o, (_, required) in shrinking.items())
            )
            theirs = counts([day_of(o) for o in sorted(shrinking)], names)
        except PipelineError as exc:
            theirs = exc
    for ordinal, (committed, required) in shrinking.items():
        on = day_of(ordinal)
        answer = theirs if not isinstance(theirs, dict) else theirs.get(on, {})
        check = confirm_shrink(on, committed, state.days[ordinal].rows, tallies[ordinal], answer, required)
        if not check.confirmed:
            refused[ordinal] = check.reason
    return mismatched, refused, set(shrinking) - set(refused)
