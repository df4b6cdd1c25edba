"""The GDPR deletion registry, kept with the data.

Mixpanel's own deletions never reach exported copies, so every destination keeps a registry at
``<project_id>/_state/gdpr/registry.json``: the ids whose data must not exist here, how they got
there (submitted to Mixpanel's GDPR API by this pipeline, or supplied by the user: a flow parameter
or a file dropped in ``<project_id>/_state/gdpr/inbox/``), Mixpanel's task status, the identity
cluster the id was expanded to, and when this destination was purged of it. Every export reads it
and leaves the registered ids out, so a backfill never brings a deleted user back.

The registry belongs to the project, not to one destination: the flows keep a project-level copy
(the ids, how they were registered, their clusters; no purge state) where every destination of the
project can see it, and every export and GDPR run unions it with the destination's own (``shared``,
``adopt``), so a destination added later never receives a deleted user either. The union never
shrinks.

The registry must hold the raw ids (it is the list exports filter on, like Mixpanel's own
suppression list); audit records hold only their SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Literal

import msgspec
import polars as pl

from tasks.lake.commit import Lake

ComplianceType = Literal["GDPR", "CCPA"]
Source = Literal["mixpanel", "user"]
EDGE_IDS = ("a", "b")  # the two ids of an identity edge (tasks.pipeline.identity.EDGE_SCHEMA)
FINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "NOT_FOUND"})


class Deletion(msgspec.Struct, kw_only=True):
    distinct_id: str
    source: Source
    compliance_type: ComplianceType = "GDPR"
    registered_at: str
    task_id: str | None = None  # Mixpanel's deletion task, once submitted
    status: str | None = None  # Mixpanel's last reported task status
    checked_at: str | None = None
    cluster: tuple[str, ...] = ()  # every id of the identity cluster, as found at purge time
    purged_at: str | None = None  # when this destination was last purged of the cluster

    @property
    def submitted(self) -> bool:
        return self.source != "mixpanel" or self.task_id is not None

    @property
    def polling(self) -> bool:
        return self.task_id is not None and self.status not in FINAL_STATUSES


class Registry(msgspec.Struct):
    deletions: dict[str, Deletion] = {}
    # "<table>/<partition>" -> run id of the version last checked against every registered id
    checked: dict[str, str] = {}
    # the purge under way here (its id is in the manifests it commits): set before the purge's
    # first commit, cleared once its audit record is written, so a re-run after a crash completes it
    purge_id: str | None = None

    def excluded_ids(self) -> frozenset[str]:
        """Every id whose rows must not be stored: the registered ids and their clusters."""
        return frozenset(i for d in self.deletions.values() for i in (d.distinct_id, *d.cluster) if i)

    def register(self, ids: Iterable[str], source: Source, compliance_type: ComplianceType) -> list[str]:
        """Add ids not registered yet; returns the new ones."""
        added = []
        for distinct_id in dict.fromkeys(i.strip() for i in ids):
            if distinct_id and distinct_id not in self.deletions:
                self.deletions[distinct_id] = Deletion(
                    distinct_id=distinct_id,
                    source=source,
                    compliance_type=compliance_type,
                    registered_at=now_iso(),
                )
                added.append(distinct_id)
        return added

    def pending_purge(self) -> list[Deletion]:
        return [d for d in self.deletions.values() if d.purged_at is None]


def shared(registries: Iterable[Registry], project: dict[str, Deletion]) -> dict[str, Deletion]:
    """The project's entries with every id and cluster id the registries know: never fewer ids,
    never a smaller cluster; purge state stays out (each destination is purged on its own)."""
    out = {k: msgspec.structs.replace(v, purged_at=None, checked_at=v.checked_at) for k, v in project.items()}
    for registry in registries:
        for key, theirs in registry.deletions.items():
            mine = out.get(key)
            if mine is None:
                out[key] = msgspec.structs.replace(theirs, purged_at=None)
                continue
            cluster = tuple(sorted(set(mine.cluster) | set(theirs.cluster)))
            newer = theirs.task_id is not None and (theirs.checked_at or "") > (mine.checked_at or "")
            source = theirs if newer or (mine.task_id is None and theirs.task_id) else mine
            out[key] = msgspec.structs.replace(
                mine,
                cluster=cluster,
                task_id=source.task_id,
                status=source.status,
                checked_at=source.checked_at,
            )
    return out


def adopt(registry: Registry, project: dict[str, Deletion]) -> int:
    """Add the project's ids (and cluster ids) this destination's registry lacks; how many entries
    changed. New entries are not purged here yet: the next GDPR run checks this destination for them."""
    changed = 0
    for key, theirs in project.items():
        mine = registry.deletions.get(key)
        if mine is None:
            registry.deletions[key] = msgspec.structs.replace(theirs, purged_at=None)
            changed += 1
        elif not set(theirs.cluster) <= set(mine.cluster):
            mine.cluster = tuple(sorted(set(mine.cluster) | set(theirs.cluster)))
            mine.purged_at = None  # the cluster grew: the next GDPR run checks here for the new ids
            changed += 1
    return changed


def excluded_of(project: dict[str, Deletion]) -> frozenset[str]:
    return Registry(project).excluded_ids()


def now_iso() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


def merged(registries: list[Registry], own: Registry) -> Registry:
    """``own`` plus what the other destinations' registries know (ids, tasks, statuses, clusters).

    Purge times stay per destination: each destination is purged on its own.
    """
    out = Registry(
        {k: msgspec.structs.replace(v) for k, v in own.deletions.items()}, dict(own.checked), own.purge_id
    )
    for other in registries:
        for key, theirs in other.deletions.items():
            mine = out.deletions.get(key)
            if mine is None:
                out.deletions[key] = msgspec.structs.replace(theirs, purged_at=None, cluster=())
                mine = out.deletions[key]
            if mine.task_id is None and theirs.task_id is not None:
                mine.task_id, mine.status, mine.checked_at = theirs.task_id, theirs.status, theirs.checked_at
            elif theirs.task_id == mine.task_id and (theirs.checked_at or "") > (mine.checked_at or ""):
                mine.status, mine.checked_at = theirs.status, theirs.checked_at
    return out


def registry_key(lake: Lake) -> str:
    return lake.layout.gdpr_registry_key()


def inbox_prefix(lake: Lake) -> str:
    return lake.layout.gdpr_inbox_prefix()


def audit_prefix(lake: Lake) -> str:
    return lake.layout.gdpr_audit_prefix()


def load_registry(lake: Lake) -> Registry:
    data = lake.storage.get_bytes(registry_key(lake))
    return msgspec.json.decode(data, type=Registry) if data else Registry({})


def save_registry(lake: Lake, registry: Registry) -> None:
    body = msgspec.json.format(msgspec.json.encode(registry), indent=2)
    lake.storage.put_bytes(registry_key(lake), body)


def read_inbox(lake: Lake) -> tuple[list[str], list[str]]:
    """Ids in the inbox files (one per line; ``#`` starts a comment) and the files' keys."""
    keys = [i.key for i in lake.storage.list(inbox_prefix(lake))]
    ids: list[str] = []
    for key in keys:
        text = (lake.storage.get_bytes(key) or b"").decode("utf-8-sig")
        ids += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [i for i in ids if i], keys


def cluster_members(ids: Collection[str], mappings: pl.DataFrame) -> dict[str, tuple[str, ...]]:
    """Each id with every id of its identity cluster (itself included), from the mappings."""
    out: dict[str, tuple[str, ...]] = {}
    if mappings.height == 0:
        return {i: (i,) for i in ids}
    for distinct_id in ids:
        roots = mappings.filter(
            (pl.col("distinct_id") == distinct_id) | (pl.col("resolved_distinct_id") == distinct_id)
        )["resolved_distinct_id"].unique()
        members = mappings.filter(pl.col("resolved_distinct_id").is_in(roots.to_list()))["distinct_id"]
        out[distinct_id] = tuple(sorted({distinct_id, *roots.to_list(), *members.to_list()}))
    return out


def id_hash(distinct_id: str) -> str:
    return hashlib.sha256(distinct_id.encode()).hexdigest()
