"""The commit protocol for destinations made of files: a local folder or an object store.

Layout under the destination root (Mixpanel's own, so existing queries keep working)::

    <project_id>/mp_master_event/YYYY/MM/DD/part-<run>-NNNNN.parquet   committed data
    <project_id>/_state/manifests/<table>/<partition>.json              the truth per partition
    <project_id>/_staging/<run>/<table>/<partition>/part-NNNNN.parquet  a run's uncommitted files
    <project_id>/mp_master_event/_rejects/<from>_<to>.<run>.jsonl        lines that were set aside
    <project_id>/_state/identity_edges/YYYY/MM/DD/part-<run>-NNNNN.parquet the day's ID-merge edges

A partition's manifest names its data files and, for event days, the day's identity-edge files:
both are switched by the same manifest write, so a day's edges always match its events.

A commit, under the partition's lock: move the staged files to their final names (unique per run,
so they never overwrite committed files), write the new manifest (one atomic object write: the
switch), then delete every file of the partition the new manifest does not name (the previous
version and any orphans of crashed runs). A reader that follows the manifest sees the old version
or the new one, never a mix; a crash anywhere leaves the old manifest valid or the new one
complete, and the next commit or ``repair`` of the partition removes the leftovers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tasks.errors import ConcurrentCommitError
from tasks.manifest import Manifest, ManifestFile, combined
from tasks.storage import Storage
from tasks.write import WrittenFile

STALE_STAGING_SECONDS = 24 * 3600.0
EVENTS_TABLE = "mp_master_event"


def partition_dir(table: str, partition: str) -> str:
    """``2024-05-01`` → ``2024/05/01`` (Mixpanel's day folders); whole tables have no sub-folder."""
    if len(partition) == 10 and partition[4] == "-" and partition[7] == "-":
        return partition.replace("-", "/")
    return ""


@dataclass
class Stage:
    """A run's uncommitted files for one table, grouped by partition."""

    destination: ObjectStoreDestination
    table: str
    run_id: str
    files: dict[str, list[ManifestFile]] = field(default_factory=dict)
    edges: dict[str, list[ManifestFile]] = field(default_factory=dict)
    _uploader: ThreadPoolExecutor | None = None
    _pending: list[Future[None]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.destination.project_prefix}/_staging/{self.run_id}/{self.table}"

    def directory(self, partition: str, scratch: Path) -> Path:
        """Where the writer should put this partition's files before ``add``."""
        local = self.destination.storage.local_path(f"{self.prefix}/{partition}")
        return local if local is not None else scratch / self.run_id / self.table / partition

    def add(self, partition: str, written: Iterable[WrittenFile], edges: bool = False) -> None:
        """Upload files for ``partition``: its data, or (``edges``) its identity edges."""
        staged = (self.edges if edges else self.files).setdefault(partition, [])
        folder = f"{self.prefix}/{partition}/edges" if edges else f"{self.prefix}/{partition}"
        for item in written:
            key = f"{folder}/{item.path.name}"
            self.destination.storage.upload(item.path, key)
            staged.append(ManifestFile(key, item.rows, item.bytes))

    def add_soon(self, partition: str, written: WrittenFile, edges: bool = False) -> None:
        """Upload in the background (one file at a time, in order) while the writer goes on."""
        if self.destination.storage.local_path(self.prefix) is not None:
            self.add(partition, [written], edges)  # a local folder: the file is already in place
            return
        if self._uploader is None:
            self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload")
        self._pending.append(self._uploader.submit(self.add, partition, [written], edges))

    def wait(self) -> None:
        """Block until every background upload is done; the first failure is raised."""
        pending, self._pending = self._pending, []
        try:
            for future in pending:
                future.result()
        finally:
            self._stop_uploader()

    def _stop_uploader(self) -> None:
        if self._uploader is not None:
            self._uploader.shutdown(wait=True)
            self._uploader = None

    def abort(self) -> None:
        for future in self._pending:  # never delete under an upload still running
            future.exception()
        self._pending = []
        self._stop_uploader()
        storage = self.destination.storage
        storage.delete(info.key for info in storage.list(self.prefix))


class ObjectStoreDestination:
    """The destination interface over any ``Storage``."""

    def __init__(self, storage: Storage, project_id: int) -> None:
        self.storage = storage
        self.project_prefix = str(project_id)

    def data_prefix(self, table: str, partition: str) -> str:
        sub = partition_dir(table, partition)
        return f"{self.project_prefix}/{table}/{sub}/" if sub else f"{self.project_prefix}/{table}/"

    def edges_prefix(self, partition: str) -> str:
        return f"{self.project_prefix}/_state/identity_edges/{partition_dir('', partition)}/"

    def manifest_key(self, table: str, partition: str) -> str:
        return f"{self.project_prefix}/_state/manifests/{table}/{partition}.json"

    def describe(self, key: str) -> str:
        return self.storage.describe(key)

    def open_stage(self, table: str, run_id: str) -> Stage:
        return Stage(self, table, run_id)

    def manifest(self, table: str, partition: str) -> Manifest | None:
        data = self.storage.get_bytes(self.manifest_key(table, partition))
        return Manifest.decode(data) if data is not None else None

    def partitions(self, table: str) -> list[str]:
        prefix = f"{self.project_prefix}/_state/manifests/{table}/"
        return sorted(
            i.key[len(prefix) : -len(".json")] for i in self.storage.list(prefix) if i.key.endswith(".json")
        )

    def commit(
        self, stage: Stage, partition: str, manifest: Manifest, expected: Manifest | None = None
    ) -> Manifest:
        """Atomically replace ``partition`` with the staged files; returns the manifest written.

        Files already named by ``manifest`` stay committed as they are (a purge keeps the files it
        did not have to rewrite). With ``expected``, the commit happens only if the partition's
        manifest is still that one (``ConcurrentCommitError`` otherwise).
        """
        run = manifest.run_id.replace("-", "")[:16]
        with self.storage.lock(f"{self.project_prefix}/{stage.table}/{partition}"):
            if expected is not None:
                self._check_unchanged(stage.table, partition, expected, "nothing was changed")
            files = self._publish(
                stage.files.get(partition, []), self.data_prefix(stage.table, partition), run
            )
            edges = self._publish(stage.edges.get(partition, []), self.edges_prefix(partition), run)
            final = msgspec.structs.replace(
                manifest, files=manifest.files + files, identity_edges=manifest.identity_edges + edges
            )
            self.storage.put_bytes(self.manifest_key(stage.table, partition), final.encode())
            self._remove_unlisted(stage.table, partition, final)
        return final

    def append(self, stage: Stage, partition: str, increment: Manifest, base: Manifest) -> Manifest:
        """Add the staged files to the committed ones of ``partition`` (an hourly increment).

        ``base`` is the manifest the increment was computed against (its watermark); if another run
        committed the partition since, nothing is added and ``ConcurrentCommitError`` says so.
        """
        run = increment.run_id.replace("-", "")[:16]
        with self.storage.lock(f"{self.project_prefix}/{stage.table}/{partition}"):
            self._check_unchanged(
                stage.table, partition, base, "nothing was added; the next run exports it again"
            )
            files = self._publish(
                stage.files.get(partition, []), self.data_prefix(stage.table, partition), run
            )
            edges = self._publish(stage.edges.get(partition, []), self.edges_prefix(partition), run)
            final = combined(base, increment, files, edges)
            self.storage.put_bytes(self.manifest_key(stage.table, partition), final.encode())
            self._remove_unlisted(stage.table, partition, final)
        return final

    def _check_unchanged(self, table: str, partition: str, expected: Manifest, outcome: str) -> None:
        current = self.manifest(table, partition)
        if current != expected:
            raise ConcurrentCommitError(
                f"{table} {partition} was committed by run {current.run_id if current else None} "
                f"while this run worked on it: {outcome}."
            )

    def _publish(self, staged: list[ManifestFile], folder: str, run: str) -> tuple[ManifestFile, ...]:
        """Move staged files to final names that are unique per run, so nothing committed is overwritten."""
        published = []
        for item in staged:
            name = item.key.rsplit("/", 1)[1].replace("part-", f"part-{run}-", 1)
            self.storage.move(item.key, folder + name)
            published.append(ManifestFile(folder + name, item.rows, item.bytes))
        return tuple(published)

    def repair(self, table: str, partition: str) -> int:
        """Remove files of ``partition`` that its manifest does not name; returns how many."""
        with self.storage.lock(f"{self.project_prefix}/{table}/{partition}"):
            return self._remove_unlisted(table, partition, self.manifest(table, partition))

    def remove_stale_staging(self, older_than_seconds: float = STALE_STAGING_SECONDS) -> int:
        cutoff = time.time() - older_than_seconds
        stale = [i.key for i in self.storage.list(f"{self.project_prefix}/_staging/") if i.modified < cutoff]
        self.storage.delete(stale)
        return len(stale)

    def put_rejects(self, table: str, name: str, lines: bytes) -> str:
        key = f"{self.project_prefix}/{table}/_rejects/{name}.jsonl"
        self.storage.put_bytes(key, lines)
        return key

    def _remove_unlisted(self, table: str, partition: str, manifest: Manifest | None) -> int:
        keep = {f.key for f in (*manifest.files, *manifest.identity_edges)} if manifest else set()
        folders = [self.data_prefix(table, partition)]
        if table == EVENTS_TABLE and partition_dir(table, partition):
            folders.append(self.edges_prefix(partition))
        unlisted = [k for folder in folders for k in self._direct_files(folder) if k not in keep]
        self.storage.delete(unlisted)
        return len(unlisted)

    def _direct_files(self, prefix: str) -> list[str]:
        # only files directly in the partition folder: `_rejects/` and other partitions are not ours
        return [i.key for i in self.storage.list(prefix) if "/" not in i.key[len(prefix) :]]
