"""A GDPR deletion, step by step: register the ids everywhere, submit them to Mixpanel, poll its
tasks, then purge every id's identity cluster from a destination and keep an audit record.

Each step saves every destination's registry before it returns, so a crash at any point loses no
id and the next run (the daily schedule) picks up where this one stopped. The `mixpanel-gdpr` flow
calls these in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec
import polars as pl

from tasks.lake.commit import Lake
from tasks.lake.runs import RunIds
from tasks.lake.tables import committed_edges, read_table
from tasks.mixpanel.gdpr_api import GdprClient, batches
from tasks.pipeline.identity import IdentityMode, resolve
from tasks.schema import MAPPINGS_TABLE, empty_mappings
from tasks.sync.purge import PurgeReport, PurgeScope, committed_by, purge_destination
from tasks.sync.registry import (
    ComplianceType,
    Deletion,
    Registry,
    audit_prefix,
    cluster_members,
    id_hash,
    load_registry,
    merged,
    now_iso,
    read_inbox,
    save_registry,
)


def register(
    lakes: list[Lake],
    ids: list[str],
    source: Literal["mixpanel", "user"],
    kind: ComplianceType,
) -> list[Registry]:
    """Every destination's registry with the new ids and what the others know; saved, inbox emptied."""
    loaded = [load_registry(lake) for lake in lakes]
    registries = [merged(loaded, own) for own in loaded]
    for registry in registries:
        registry.register(ids, source, kind)
    inboxes = [read_inbox(lake) for lake in lakes]
    for registry in registries:
        for inbox_ids, _ in inboxes:
            registry.register(inbox_ids, "user", kind)
    for lake, registry, (_, keys) in zip(lakes, registries, inboxes, strict=True):
        save_registry(lake, registry)
        lake.storage.delete(keys)  # registered everywhere first: a crash loses no id
    return registries


def submit(
    client: GdprClient,
    lakes: list[Lake],
    registries: list[Registry],
    log: Callable[[str], None],
) -> None:
    """Send the ids not sent yet to Mixpanel's GDPR API, saving every registry after each request."""
    first = registries[0]
    waiting = [d for d in first.deletions.values() if not d.submitted]
    for kind in ("GDPR", "CCPA"):
        for batch in batches([d.distinct_id for d in waiting if d.compliance_type == kind]):
            task_id = client.submit(batch, kind)
            log(f"Mixpanel GDPR task {task_id}: {len(batch)} id(s) submitted")
            for registry in registries:
                for distinct_id in batch:
                    entry = registry.deletions[distinct_id]
                    entry.task_id, entry.status, entry.checked_at = task_id, "PENDING", now_iso()
            for lake, registry in zip(lakes, registries, strict=True):
                save_registry(lake, registry)  # after each request: a crash does not resubmit


def poll(client: GdprClient, lakes: list[Lake], registries: list[Registry]) -> None:
    """Read the status of every Mixpanel task not finished yet."""
    tasks = sorted({d.task_id for d in registries[0].deletions.values() if d.polling and d.task_id})
    for task_id in tasks:
        status = client.status(task_id)
        for registry in registries:
            for entry in registry.deletions.values():
                if entry.task_id == task_id:
                    entry.status, entry.checked_at = status, now_iso()
    if tasks:
        for lake, registry in zip(lakes, registries, strict=True):
            save_registry(lake, registry)


def purge(
    lake: Lake,
    registry: Registry,
    identity_mode: IdentityMode,
    run: RunIds,
    log: Callable[[str], None],
) -> dict[str, object]:
    """Purge the clusters of new ids everywhere, and every registered id from partitions changed
    since they were last checked; then mark the ids and write the audit record."""
    pending = registry.pending_purge()
    where = lake.describe(lake.project_prefix)
    if pending:
        clusters = cluster_members([d.distinct_id for d in pending], cluster_mappings(lake, identity_mode))
        for entry in pending:
            entry.cluster = tuple(sorted(set(entry.cluster) | set(clusters[entry.distinct_id])))
    # a purge that died after some commits left its id: this run completes it under the same id,
    # so its audit counts what both runs removed (the commits name it: tasks.sync.purge)
    registry.purge_id = registry.purge_id or run.run_id
    save_registry(lake, registry)  # clusters first: exports leave them out from now on
    ids = frozenset(i for entry in pending for i in (entry.distinct_id, *entry.cluster))
    scope = PurgeScope(ids, registry.excluded_ids(), registry.checked)
    try:
        done = purge_destination(lake, scope, run.run_id, run.flow_run_id, registry.purge_id)
    finally:
        save_registry(lake, registry)  # the partitions checked so far need no second look
    report = committed_by(lake, registry.purge_id, done.rejects)
    removed = sum(report.events.values()) + sum(report.tables.values())
    if pending or removed:
        when = now_iso()
        for entry in pending:
            entry.purged_at = when
        write_audit(lake, run, when, pending, ids, report, registry.purge_id)
    registry.purge_id = None
    save_registry(lake, registry)
    log(f"{where}: {len(pending)} new id(s) in {len(ids)} cluster id(s) purged, {removed} row(s) removed")
    return {"destination": where, "ids": len(pending), "cluster ids": len(ids), "rows removed": removed}


def cluster_mappings(lake: Lake, identity_mode: IdentityMode) -> pl.DataFrame:
    """Clusters from the committed merge edges (fresher than the table) and the mappings table."""
    edges, _ = committed_edges(lake)
    frames = [resolve(edges, identity_mode)] if edges.height else []
    table = read_table(lake, MAPPINGS_TABLE)
    if table is not None and table.height:
        frames.append(table.select("distinct_id", "resolved_distinct_id"))
    return pl.concat(frames).unique() if frames else empty_mappings()


def write_audit(
    lake: Lake,
    run: RunIds,
    when: str,
    pending: list[Deletion],
    ids: frozenset[str],
    report: PurgeReport,
    purge_id: str,
) -> None:
    record: dict[str, object] = {
        "run_id": run.run_id,
        "purge_id": purge_id,
        "flow_run_id": run.flow_run_id,
        "purged_at": when,
        "ids": len(pending),
        "cluster_ids": len(ids),
        "id_sha256": sorted(id_hash(d.distinct_id) for d in pending),
        "cluster_id_sha256": sorted(id_hash(i) for i in ids),
        "rows_removed": report.rows_removed(),
    }
    if not pending:
        record["note"] = "rows of registered ids came back in partitions written since they were last checked"
    stamp = when.replace("-", "").replace(":", "").replace("+0000", "Z")
    body = msgspec.json.format(msgspec.json.encode(record), indent=2)
    lake.storage.put_bytes(f"{audit_prefix(lake)}{stamp}-{run.run_id}.json", body)
