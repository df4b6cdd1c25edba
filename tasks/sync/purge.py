"""Remove every row of a set of ids from one destination, partition by partition.

Each event day is checked file by file; a file holding none of the ids stays committed as it is, a
file holding some is rewritten without them, and the day's new manifest (files kept + rewritten;
rows, fingerprint and the shrink guard's memory ``held_most`` reduced by exactly the rows removed)
is committed through the destination's commit protocol only if the day is still the version that
was read. So every partition is either purged or untouched, whatever happens; a day without any
of the ids is not rewritten at all. The identity edges of the day go the same way, in the same
commit. People and identity tables are swapped whole. Warehouses reload each partition committed
here in one transaction.

Each commit names its purge (``Manifest.purge``: the purge id and the rows removed), in the same
atomic write as the purged version, so what a purge removed is known from the manifests alone: a
purge that dies after some commits is completed, under the same purge id, by the next run, whose
audit then counts the rows of both (``committed_by``).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import polars as pl

from tasks.lake.commit import Lake, Stage
from tasks.lake.committed import read_committed
from tasks.lake.files import FileFormat, RollingFiles, WrittenFile, event_batches
from tasks.lake.layout import tagged
from tasks.lake.manifest import Manifest, ManifestFile, PurgeNote, fingerprint_hex, held
from tasks.lake.tables import WHOLE, read_table, replace_table
from tasks.pipeline.exclude import event_rows_of, id_rows_of
from tasks.pipeline.parse import row_hash
from tasks.schema import EVENTS_TABLE, MAPPINGS_SCHEMA, MAPPINGS_TABLE, PEOPLE_SCHEMA, PEOPLE_TABLE
from tasks.sync.registry import EDGE_IDS


@dataclass
class PurgeReport:
    """Rows removed: per event day, and per whole table."""

    events: dict[str, int] = field(default_factory=dict)
    edges: dict[str, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    rejects: int = 0

    def rows_removed(self) -> dict[str, object]:
        return {
            EVENTS_TABLE: {day: n for day, n in sorted(self.events.items()) if n},
            "identity_edges": {day: n for day, n in sorted(self.edges.items()) if n},
            **self.tables,
            "rejected_lines": self.rejects,
        }


@dataclass
class PurgeScope:
    """Which ids each partition is checked for.

    New ids everywhere; every registered id where the partition changed since it was last checked
    (an export that began before an id was registered may commit after the purge). ``checked``
    maps ``<table>/<partition>`` to the run id of the version last checked against every id; it is
    kept in the registry and updated as partitions are checked.
    """

    new_ids: frozenset[str]
    all_ids: frozenset[str]
    checked: dict[str, str]

    def ids_for(self, key: str, version: str) -> frozenset[str]:
        return self.new_ids if self.checked.get(key) == version else self.all_ids


def purge_destination(
    lake: Lake,
    scope: PurgeScope,
    run_id: str,
    flow_run_id: str | None = None,
    purge_id: str | None = None,
) -> PurgeReport:
    """Remove the scope's ids from every table of ``destination``; each partition purged or untouched.

    ``purge_id`` (default ``run_id``) is recorded in every manifest committed here."""
    purge_id = purge_id or run_id
    report = PurgeReport()
    if not scope.all_ids:
        return report
    # leftovers of crashed runs may hold the ids too: orphan files, stale staging, a warehouse load
    # that did not happen (``repair`` reloads it, so the warehouse holds what the manifest names)
    lake.remove_stale_staging()
    for day in lake.partitions(EVENTS_TABLE):
        lake.repair(EVENTS_TABLE, day)

        def purge_events(ids: frozenset[str], d: str = day) -> tuple[int, int]:
            return purge_day(lake, d, ids, run_id, flow_run_id, purge_id)

        report.events[day], report.edges[day] = _checked(lake, EVENTS_TABLE, day, scope, purge_events)
    for table, columns in (
        (PEOPLE_TABLE, ("distinct_id",)),
        (MAPPINGS_TABLE, ("distinct_id", "resolved_distinct_id")),
    ):
        lake.repair(table, WHOLE)

        def purge_rows(ids: frozenset[str], t: str = table, c: tuple[str, ...] = columns) -> tuple[int, int]:
            return _purge_table(lake, t, ids, c, run_id, flow_run_id, purge_id), 0

        report.tables[table], _ = _checked(lake, table, WHOLE, scope, purge_rows)
    report.rejects = _purge_rejects(lake, scope)
    # table formats keep replaced versions for time travel: a deleted user must not survive there
    # (run on every purge, so a purge that crashed after its commits is completed by the next one)
    lake.forget_history()
    return report


def _checked(
    lake: Lake,
    table: str,
    partition: str,
    scope: PurgeScope,
    purge: Callable[[frozenset[str]], tuple[int, int]],
) -> tuple[int, int]:
    """Purge one partition of the ids it must be checked for, then record the version checked."""
    key = f"{table}/{partition}"
    manifest = lake.manifest(table, partition)
    if manifest is None:
        return 0, 0
    ids = scope.ids_for(key, manifest.run_id)
    removed = purge(ids) if ids else (0, 0)
    after = lake.manifest(table, partition)
    if after is not None:
        scope.checked[key] = after.run_id
    return removed


def purge_day(
    lake: Lake,
    day: str,
    ids: Collection[str],
    run_id: str,
    flow_run_id: str | None = None,
    purge_id: str | None = None,
) -> tuple[int, int]:
    """(event rows, edge rows) removed from ``day``; (0, 0) leaves the day untouched."""
    base = lake.manifest(EVENTS_TABLE, day)
    if base is None:
        return 0, 0
    stage = lake.open_stage(EVENTS_TABLE, f"{run_id}-purge-{day.replace('-', '')}")
    try:
        with tempfile.TemporaryDirectory(prefix="mp-purge-") as scratch:
            folder = stage.directory(day, Path(scratch))
            kept, removed, removed_hash = _rewrite_events(lake, stage, day, base, ids, folder)
            kept_edges, removed_edges = _rewrite_edges(lake, stage, day, base, ids, folder / "edges")
            if removed == 0 and removed_edges == 0:
                return 0, 0
            manifest = msgspec.structs.replace(
                base,
                files=kept,
                identity_edges=kept_edges,
                rows=base.rows - removed,
                fingerprint=fingerprint_hex(int(base.fingerprint, 16) - removed_hash),
                run_id=run_id,
                flow_run_id=flow_run_id,
                purged_rows=base.purged_rows + removed,
                # the removed rows are gone for good: a later export without them is no shrink
                held_most=held(base) - removed,
                purge=PurgeNote(purge_id or run_id, removed, removed_edges),
            )
            lake.commit(stage, day, manifest, expected=base)
    finally:
        stage.abort()  # drops what is left in staging (all of it, if the commit did not happen)
    return removed, removed_edges


def _rewrite_events(
    lake: Lake,
    stage: Stage,
    day: str,
    base: Manifest,
    ids: Collection[str],
    folder: Path,
) -> tuple[tuple[ManifestFile, ...], int, int]:
    """Files kept as they are, rows removed, and the fingerprint share of the removed rows."""
    kept: list[ManifestFile] = []
    removed = removed_hash = 0
    fmt = FileFormat(base.format)
    for index, item in enumerate(base.files):
        data = read_committed(lake.storage, item.key)
        if not any(batch.filter(event_rows_of(ids)).height for batch in event_batches(data, fmt)):
            kept.append(item)
            continue
        files = RollingFiles(
            folder / f"f{index:05d}", fmt, max_file_rows=max(item.rows, 1), max_file_bytes=1 << 62
        )
        for batch in event_batches(data, fmt):
            gone = batch.filter(event_rows_of(ids))
            removed += gone.height
            removed_hash += sum(map(row_hash, gone["event_name"], (p.encode() for p in gone["properties"])))
            files.write(batch.filter(~event_rows_of(ids)))
        stage.add(day, _renamed(files.close(), index))
    return tuple(kept), removed, removed_hash


def _rewrite_edges(
    lake: Lake,
    stage: Stage,
    day: str,
    base: Manifest,
    ids: Collection[str],
    folder: Path,
) -> tuple[tuple[ManifestFile, ...], int]:
    kept: list[ManifestFile] = []
    removed = 0
    for index, item in enumerate(base.identity_edges):
        edges = pl.read_parquet(io.BytesIO(read_committed(lake.storage, item.key)))
        gone = edges.filter(id_rows_of(ids, EDGE_IDS)).height
        if gone == 0:
            kept.append(item)
            continue
        removed += gone
        files = RollingFiles(folder / f"f{index:05d}", schema=None)
        files.write(edges.filter(~id_rows_of(ids, EDGE_IDS)))
        stage.add(day, _renamed(files.close(), index), edges=True)
    return tuple(kept), removed


def _renamed(written: list[WrittenFile], index: int) -> list[WrittenFile]:
    """Rewritten files get names unique within the day (``part-pNNNNN-…``), beside the kept ones."""
    out = []
    for item in written:
        target = item.path.parent.parent / tagged(item.path.name, f"p{index:05d}")
        item.path.rename(target)
        out.append(WrittenFile(target, item.rows, item.bytes))
    return out


def _purge_table(
    lake: Lake,
    table: str,
    ids: Collection[str],
    columns: tuple[str, ...],
    run_id: str,
    flow_run_id: str | None,
    purge_id: str,
) -> int:
    rows = read_table(lake, table)
    if rows is None or rows.height == 0:
        return 0
    gone = rows.filter(id_rows_of(ids, columns)).height
    if gone:
        schema, value = (
            (PEOPLE_SCHEMA, "properties") if table == PEOPLE_TABLE else (MAPPINGS_SCHEMA, columns[1])
        )
        kept = [rows.filter(~id_rows_of(ids, columns))]
        replace_table(lake, table, schema, kept, run_id, value, flow_run_id, PurgeNote(purge_id, gone))
    return gone


def committed_by(lake: Lake, purge_id: str, rejects: int = 0) -> PurgeReport:
    """What the commits of ``purge_id`` removed, read from the manifests they wrote: rows a crashed
    run of the same purge removed are counted too (``rejects``: lines scrubbed, not in manifests)."""
    report = PurgeReport(rejects=rejects)
    for day in lake.partitions(EVENTS_TABLE):
        note = _note(lake, EVENTS_TABLE, day, purge_id)
        report.events[day], report.edges[day] = (note.rows, note.edges) if note else (0, 0)
    for table in (PEOPLE_TABLE, MAPPINGS_TABLE):
        note = _note(lake, table, WHOLE, purge_id)
        report.tables[table] = note.rows if note else 0
    return report


def _note(lake: Lake, table: str, partition: str, purge_id: str) -> PurgeNote | None:
    manifest = lake.manifest(table, partition)
    note = manifest.purge if manifest is not None else None
    return note if note is not None and note.id == purge_id else None


def _purge_rejects(lake: Lake, scope: PurgeScope) -> int:
    """Lines set aside by exports are kept for inspection: scrub those that mention an id."""
    removed = 0
    for info in lake.storage.list(lake.layout.rejects_prefix(EVENTS_TABLE)):
        key = f"_rejects/{info.key.rsplit('/', 1)[-1]}"
        ids = scope.ids_for(key, "scrubbed")
        scope.checked[key] = "scrubbed"
        if not ids:
            continue
        needles = [i.encode() for i in ids] + [msgspec.json.encode(i)[1:-1] for i in ids]
        lines = (lake.storage.get_bytes(info.key) or b"").splitlines(keepends=True)
        kept = [line for line in lines if not any(n in line for n in needles)]
        if len(kept) != len(lines):
            removed += len(lines) - len(kept)
            lake.storage.put_bytes(info.key, b"".join(kept))
    return removed
