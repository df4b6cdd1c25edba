"""The GDPR flow: ask Mixpanel to delete users, and purge them from every destination.

One run: register new ids (the ``distinct_ids`` parameter, submitted to Mixpanel; ids in files of
each destination's ``_state/gdpr/inbox/``, supplied by the user and purged here only), submit the
unsubmitted ones to Mixpanel's GDPR API, poll the tasks not finished yet, then expand every id not
purged yet to its whole identity cluster and remove the cluster's rows from every table of every
destination. Each destination gets an audit record of the purge, with ids only as SHA-256.
Scheduled daily, a run with no new ids polls and finishes any purge a crash interrupted.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec
import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from blocks.destinations.catalog import AnyDestination
from blocks.destinations.local import LocalDestination
from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials
from flows.runtime import prepare_run
from tasks.errors import BadRequestError, PipelineError
from tasks.lake.commit import ObjectStoreDestination
from tasks.lake.tables import MAPPINGS_TABLE, committed_edges, read_table
from tasks.mixpanel.gdpr_api import GdprClient, batches
from tasks.pipeline.identity import resolve
from tasks.sync.purge import PurgeReport, PurgeScope, purge_destination
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


@flow(name="mixpanel-gdpr", log_prints=True)
def gdpr(
    credentials: MixpanelCredentials,
    destinations: list[AnyDestination] | None = None,
    gdpr_credentials: MixpanelGdprCredentials | None = None,
    distinct_ids: list[str] | None = None,
    submit_to_mixpanel: bool = True,
    compliance_type: Literal["GDPR", "CCPA"] = "GDPR",
) -> dict[str, object]:
    """Delete users: Mixpanel's GDPR API, then every row of their identity clusters everywhere.

    Args:
        credentials: The Mixpanel project (a MixpanelCredentials block).
        destinations: Every destination to purge: the blocks the deployment lists in prefect.yaml; add
            or remove blocks here for this run.
        gdpr_credentials: Project token and GDPR OAuth token (needed to submit and poll deletions).
        distinct_ids: Users to delete. Ids may also be dropped, one per line, in files under
            <project_id>/_state/gdpr/inbox/ of a destination: those are purged here only.
        submit_to_mixpanel: Submit distinct_ids to Mixpanel's GDPR API (off: purge here only).
        compliance_type: GDPR or CCPA, as Mixpanel records the request.
    """
    prepare_run()
    logger = get_run_logger()
    ids = [i for i in (distinct_ids or []) if i.strip()]
    if ids and submit_to_mixpanel and gdpr_credentials is None:
        raise BadRequestError(
            "distinct_ids are to be submitted to Mixpanel but no gdpr_credentials block was given: pass one, "
            "or set submit_to_mixpanel to false to purge them from the destinations only."
        )
    targets = [d.connect(credentials.project_id) for d in destinations or [LocalDestination()]]
    registries = _registered(targets, ids, "mixpanel" if submit_to_mixpanel else "user", compliance_type)
    mixpanel_error: PipelineError | None = None
    if gdpr_credentials is not None:
        try:
            with GdprClient(
                credentials.api_settings(), gdpr_credentials.settings(), notify=logger.warning
            ) as client:
                _submit(client, targets, registries)
                _poll(client, targets, registries)
        except PipelineError as exc:  # the purge here does not wait for Mixpanel
            mixpanel_error = exc
    run_id = uuid.uuid4().hex[:12]
    rows = [
        _purge(credentials, target, registry, run_id)
        for target, registry in zip(targets, registries, strict=True)
    ]
    create_table_artifact(key="mixpanel-gdpr-summary", table=rows, description="GDPR deletions")
    if mixpanel_error is not None:
        raise type(mixpanel_error)(
            f"{mixpanel_error} The destinations were purged; the ids not yet sent stay registered and the next "
            "run sends them."
        )
    return {"destinations": rows}


def _registered(
    targets: list[ObjectStoreDestination],
    ids: list[str],
    source: Literal["mixpanel", "user"],
    kind: ComplianceType,
) -> list[Registry]:
    """Every destination's registry with the new ids and what the others know; saved, inbox emptied."""
    loaded = [load_registry(t) for t in targets]
    registries = [merged(loaded, own) for own in loaded]
    for registry in registries:
        registry.register(ids, source, kind)
    inboxes = [read_inbox(t) for t in targets]
    for registry in registries:
        for inbox_ids, _ in inboxes:
            registry.register(inbox_ids, "user", kind)
    for target, registry, (_, keys) in zip(targets, registries, inboxes, strict=True):
        save_registry(target, registry)
        target.storage.delete(keys)  # registered everywhere first: a crash loses no id
    return registries


def _submit(client: GdprClient, targets: list[ObjectStoreDestination], registries: list[Registry]) -> None:
    logger = get_run_logger()
    first = registries[0]
    waiting = [d for d in first.deletions.values() if not d.submitted]
    for kind in ("GDPR", "CCPA"):
        for batch in batches([d.distinct_id for d in waiting if d.compliance_type == kind]):
            task_id = client.submit(batch, kind)
            logger.info("Mixpanel GDPR task %s: %d id(s) submitted", task_id, len(batch))
            for registry in registries:
                for distinct_id in batch:
                    entry = registry.deletions[distinct_id]
                    entry.task_id, entry.status, entry.checked_at = task_id, "PENDING", now_iso()
            for target, registry in zip(targets, registries, strict=True):
                save_registry(target, registry)  # after each request: a crash does not resubmit


def _poll(client: GdprClient, targets: list[ObjectStoreDestination], registries: list[Registry]) -> None:
    tasks = sorted({d.task_id for d in registries[0].deletions.values() if d.polling and d.task_id})
    for task_id in tasks:
        status = client.status(task_id)
        for registry in registries:
            for entry in registry.deletions.values():
                if entry.task_id == task_id:
                    entry.status, entry.checked_at = status, now_iso()
    if tasks:
        for target, registry in zip(targets, registries, strict=True):
            save_registry(target, registry)


def _purge(
    credentials: MixpanelCredentials, target: ObjectStoreDestination, registry: Registry, run_id: str
) -> dict[str, object]:
    """Purge the clusters of new ids everywhere, and every registered id from partitions changed
    since they were last checked; then mark the ids and write the audit record."""
    pending = registry.pending_purge()
    where = target.describe(str(credentials.project_id))
    if pending:
        clusters = cluster_members([d.distinct_id for d in pending], _mappings(credentials, target))
        for entry in pending:
            entry.cluster = tuple(sorted(set(entry.cluster) | set(clusters[entry.distinct_id])))
        save_registry(target, registry)  # clusters first: exports leave them out from now on
    ids = frozenset(i for entry in pending for i in (entry.distinct_id, *entry.cluster))
    scope = PurgeScope(ids, registry.excluded_ids(), registry.checked)
    try:
        report = purge_destination(target, scope, run_id, str(flow_run.id) if flow_run.id else None)
    finally:
        save_registry(target, registry)  # the partitions checked so far need no second look
    removed = sum(report.events.values()) + sum(report.tables.values())
    if pending or removed:
        when = now_iso()
        for entry in pending:
            entry.purged_at = when
        _audit(target, run_id, when, pending, ids, report)
        save_registry(target, registry)
    get_run_logger().info(
        "%s: %d new id(s) in %d cluster id(s) purged, %d row(s) removed",
        where,
        len(pending),
        len(ids),
        removed,
    )
    return {"destination": where, "ids": len(pending), "cluster ids": len(ids), "rows removed": removed}


def _mappings(credentials: MixpanelCredentials, target: ObjectStoreDestination) -> pl.DataFrame:
    """Clusters from the committed merge edges (fresher than the table) and the mappings table."""
    edges, _ = committed_edges(target)
    frames = [resolve(edges, credentials.identity_mode)] if edges.height else []
    table = read_table(target, MAPPINGS_TABLE)
    if table is not None and table.height:
        frames.append(table.select("distinct_id", "resolved_distinct_id"))
    return (
        pl.concat(frames).unique()
        if frames
        else pl.DataFrame(schema={"distinct_id": pl.String, "resolved_distinct_id": pl.String})
    )


def _audit(
    target: ObjectStoreDestination,
    run_id: str,
    when: str,
    pending: list[Deletion],
    ids: frozenset[str],
    report: PurgeReport,
) -> None:
    record: dict[str, object] = {
        "run_id": run_id,
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
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
    target.storage.put_bytes(f"{audit_prefix(target)}{stamp}-{run_id}.json", body)
