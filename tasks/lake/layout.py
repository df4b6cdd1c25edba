"""The key layout under a destination root: where every file of a project lies, written once.

Mixpanel's own layout for the data (so existing queries keep working), the pipeline's state beside it::

    <project_id>/mp_master_event/YYYY/MM/DD/part-<run>-s<seq>-NNNNN.parquet   an event day's committed data
    <project_id>/mp_people_data/part-<run>-s<seq>-NNNNN.parquet                a whole table's
    <project_id>/mp_master_event/_rejects/<from>_<to>.<run>.jsonl              lines an export set aside
    <project_id>/_state/manifests/<table>/<partition>.json                    the truth per partition
    <project_id>/_state/identity_edges/YYYY/MM/DD/part-<run>-s<seq>-NNNNN.parquet the day's ID-merge edges
    <project_id>/_state/status/mp_master_event/<day>.json                     what is known about a day
    <project_id>/_state/gdpr/registry.json, inbox/, audit/                    the GDPR deletion registry
    <project_id>/_state/spectrum/<table>/                                     Glue's symlink manifests
    <project_id>/_staging/<run>/<table>/<partition>/[edges/]part-NNNNN.parquet a run's uncommitted files
    <project_id>/delta/<table>/, <project_id>/iceberg/<table>/                 the table formats' tables

Invariants: every key is relative to the root (``tasks.lake.store.check_key`` checks it on use); a
partition becomes part of a key only once checked (``check_partition``: a real date of the events
table, ``all`` of a whole table), so no name from outside can reach another folder; a published
file's name carries the manifest sequence it was meant for (``sequence_of``), which is how a commit
tells a live run's files from garbage (``tasks.lake.commit``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.errors import OutsideDestinationError
from tasks.schema import EVENTS_TABLE, WHOLE_PARTITION, is_partition

PART = "part-"  # every data file's name starts so: part-NNNNN when written, part-<tag>-NNNNN once renamed
TAGGED = re.compile(rf"^{PART}[^/]*?-s(\d+)-[^/]*$")
MANIFEST_SUFFIX = ".json"


def check_partition(table: str, partition: str) -> str:
    """``partition`` if it is one of ``table``'s, else ``OutsideDestinationError`` (nothing touched)."""
    if is_partition(table, partition):
        return partition
    kind = "a real date YYYY-MM-DD" if table == EVENTS_TABLE else repr(WHOLE_PARTITION)
    raise OutsideDestinationError(
        f"{partition!r} is not a partition of {table} (its partitions are {kind}): nothing was touched."
    )


def partition_dir(table: str, partition: str) -> str:
    """``2024-05-01`` → ``2024/05/01`` (Mixpanel's day folders); whole tables have no sub-folder."""
    check_partition(table, partition)
    return partition.replace("-", "/") if table == EVENTS_TABLE else ""


def tagged(name: str, tag: str) -> str:
    """``part-00003.parquet`` → ``part-<tag>-00003.parquet``: a name unique to a run (or a rewrite)."""
    return name.replace(PART, f"{PART}{tag}-", 1)


def sequence_of(key: str) -> int:
    """The sequence a published file was meant for; 0 for any other name (never a live run's)."""
    found = TAGGED.match(key.rsplit("/", 1)[-1])
    return int(found.group(1)) if found else 0


@dataclass(frozen=True)
class Layout:
    """The keys of one project under a destination root."""

    project: str  # the project id, the first folder of every key

    # committed data -------------------------------------------------------------------------------

    def data_prefix(self, table: str, partition: str) -> str:
        sub = partition_dir(table, partition)
        return f"{self.project}/{table}/{sub}/" if sub else f"{self.project}/{table}/"

    def edges_prefix(self, partition: str) -> str:
        return f"{self.project}/_state/identity_edges/{partition_dir(EVENTS_TABLE, partition)}/"

    def rejects_prefix(self, table: str) -> str:
        return f"{self.project}/{table}/_rejects/"

    def rejects_key(self, table: str, name: str) -> str:
        return f"{self.rejects_prefix(table)}{name}.jsonl"

    def table_format_prefix(self, name: str) -> str:
        """Where a table format (``delta``, ``iceberg``) keeps the project's tables."""
        return f"{self.project}/{name}"

    # state ----------------------------------------------------------------------------------------

    def manifests_prefix(self, table: str) -> str:
        return f"{self.project}/_state/manifests/{table}/"

    def manifest_key(self, table: str, partition: str) -> str:
        return f"{self.manifests_prefix(table)}{check_partition(table, partition)}{MANIFEST_SUFFIX}"

    def manifest_partition(self, table: str, key: str) -> str | None:
        """The partition a listed key is the manifest of; None for anything else in the folder."""
        prefix = self.manifests_prefix(table)
        if not key.startswith(prefix) or not key.endswith(MANIFEST_SUFFIX):
            return None
        name = key[len(prefix) : -len(MANIFEST_SUFFIX)]
        return name if "/" not in name and is_partition(table, name) else None

    def note_key(self, day: str) -> str:
        return f"{self.project}/_state/status/{EVENTS_TABLE}/{check_partition(EVENTS_TABLE, day)}.json"

    def gdpr_registry_key(self) -> str:
        return f"{self.project}/_state/gdpr/registry.json"

    def gdpr_inbox_prefix(self) -> str:
        return f"{self.project}/_state/gdpr/inbox/"

    def gdpr_audit_prefix(self) -> str:
        return f"{self.project}/_state/gdpr/audit/"

    def spectrum_prefix(self) -> str:
        return f"{self.project}/_state/spectrum/"

    # a run's uncommitted files --------------------------------------------------------------------

    def staging_prefix(self) -> str:
        return f"{self.project}/_staging/"

    def stage_prefix(self, run_id: str, table: str) -> str:
        return f"{self.staging_prefix()}{run_id}/{table}"

    def stage_folder(self, run_id: str, table: str, partition: str, edges: bool = False) -> str:
        folder = f"{self.stage_prefix(run_id, table)}/{check_partition(table, partition)}"
        return f"{folder}/edges" if edges else folder
