"""The commit protocol for destinations made of files: a local folder or an object store.

The key layout (Mixpanel's own for the data, the state beside it) is ``tasks.lake.layout``.

A partition's manifest names its data files and, for event days, the day's identity-edge files:
both are switched by the same manifest write, so a day's edges always match its events.

A commit is a compare-and-swap of the manifest, with no lock and no lease:

1. when the run first touches the partition it reads the manifest and its version (ETag,
   generation, content hash), or finds none;
2. it moves its staged files to final names unique to the run, tagged with the sequence number the
   new manifest will have (the base's plus one): nothing committed is overwritten;
3. it writes the new manifest with one conditional write: create-if-absent when there was none,
   ``If-Match`` the version read in step 1 otherwise. That write is the switch. If another run
   committed in between, the write is refused: the run deletes the files it published and fails
   with ``ConcurrentCommitError`` (retriable); its retry starts from the new version;
4. it deletes the files of the partition that the new manifest does not name and whose tag is at
   most the new sequence: the previous version, and files of runs that can no longer win (their
   base is older, so their conditional write must fail). Files tagged for the next sequence belong
   to runs that started from this version and are left alone.

A reader that follows the manifest sees the old version or the new one, never a mix; a crash at
any point leaves a valid manifest, and the next commit (or ``repair``) removes the leftovers.

Containment: every key is relative and checked (``tasks.lake.store.check_key``); manifests are checked
on read (a key outside its partition is a ``CorruptManifestError`` and nothing is deleted); a partition
is a real date of the events table or ``all`` of a whole table (``tasks.schema.is_partition``): any
other name is refused before anything is read or deleted, and ignored when listing; deletions happen
only under the table's own prefixes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec
import pyarrow as pa

from tasks.errors import (
    ConcurrentCommitError,
    CorruptManifestError,
    OutsideDestinationError,
    PreconditionFailedError,
)
from tasks.lake.files import WrittenFile
from tasks.lake.layout import MANIFEST_SUFFIX, Layout, sequence_of, tagged
from tasks.lake.manifest import Manifest, ManifestFile, combined
from tasks.lake.store import Store, Versioned, check_key
from tasks.schema import EVENTS_TABLE, is_day

log = logging.getLogger(__name__)

STALE_STAGING_SECONDS = 24 * 3600.0


@dataclass
class Stage:
    """A run's uncommitted files for one table, grouped by partition, and the version each started from."""

    destination: Lake
    table: str
    run_id: str
    files: dict[str, list[ManifestFile]] = field(default_factory=dict)
    edges: dict[str, list[ManifestFile]] = field(default_factory=dict)
    bases: dict[str, tuple[Manifest | None, str | None]] = field(default_factory=dict)
    _uploader: ThreadPoolExecutor | None = None
    _pending: list[Future[None]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.destination.layout.stage_prefix(self.run_id, self.table)

    def base(self, partition: str) -> tuple[Manifest | None, str | None]:
        """The manifest and version this run started from (read the first time it is asked)."""
        if partition not in self.bases:
            self.bases[partition] = self.destination.versioned_manifest(self.table, partition)
        return self.bases[partition]

    def directory(self, partition: str, scratch: Path) -> Path:
        """Where the writer should put this partition's files before ``add``."""
        self.base(partition)
        local = self.destination.storage.local_path(
            self.destination.layout.stage_folder(self.run_id, self.table, partition)
        )
        return local if local is not None else scratch / self.run_id / self.table / partition

    def add(self, partition: str, written: Iterable[WrittenFile], edges: bool = False) -> None:
        """Upload files for ``partition``: its data, or (``edges``) its identity edges."""
        self.base(partition)
        staged = (self.edges if edges else self.files).setdefault(partition, [])
        folder = self.destination.layout.stage_folder(self.run_id, self.table, partition, edges)
        for item in written:
            key = f"{folder}/{item.path.name}"
            self.destination.storage.upload(item.path, key)
            staged.append(ManifestFile(key, item.rows, item.bytes))

    def add_soon(self, partition: str, written: WrittenFile, edges: bool = False) -> None:
        """Upload in the background (one file at a time, in order) while the writer goes on."""
        self.base(partition)
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
        """Delete what is left of this run's staging (only its own folder) and its empty folders."""
        for future in self._pending:  # never delete under an upload still running
            future.exception()
        self._pending = []
        self._stop_uploader()
        storage = self.destination.storage
        storage.delete(info.key for info in storage.list(self.prefix))
        storage.prune(self.prefix)


@dataclass(frozen=True)
class At:
    """One partition of one table of the lake: what a commit hook is told about."""

    lake: Lake
    table: str
    partition: str


class CommitHook(Protocol):
    """Work that follows each commit of the lake: loading a warehouse, writing a table format.

    It runs once the manifest has switched (the files are the truth); if it fails, the commit stands
    and ``repaired`` (called by every run's ``repair`` of the partition) finishes it.
    """

    def committed(self, at: At, manifest: Manifest, base: Manifest | None) -> None:
        """``manifest`` was committed; ``base``: the manifest an hourly increment was added to."""
        ...

    def repaired(self, at: At, manifest: Manifest | None) -> None:
        """Bring the hook's copy of the partition up to ``manifest`` if an earlier run did not."""
        ...


@runtime_checkable
class KeepsHistory(Protocol):
    """A hook whose copy keeps replaced versions (time travel) that a GDPR purge must remove."""

    def forget(self) -> int:
        """Physically remove every file no current version references; returns how many."""
        ...


@runtime_checkable
class PublishesStatus(Protocol):
    """A hook whose copy keeps the destination's sync status where its users query it (a warehouse view)."""

    def publish_status(self, table: pa.Table) -> None:
        """Replace the published status with ``table`` (``tasks.schema.SYNC_STATUS_SCHEMA`` rows)."""
        ...


class Lake:
    """The destination interface over any ``Store``, with the hooks that follow its commits."""

    def __init__(self, storage: Store, project_id: int, hooks: Sequence[CommitHook] = ()) -> None:
        self.storage = storage
        self.layout = Layout(str(project_id))
        self.project_prefix = self.layout.project
        self.hooks = tuple(hooks)

    def with_hooks(self, *hooks: CommitHook) -> Lake:
        """The same files with ``hooks`` after every commit (a warehouse or a table format)."""
        return Lake(self.storage, int(self.project_prefix), (*self.hooks, *hooks))

    def data_prefix(self, table: str, partition: str) -> str:
        return self.layout.data_prefix(table, partition)

    def edges_prefix(self, partition: str) -> str:
        return self.layout.edges_prefix(partition)

    def manifest_key(self, table: str, partition: str) -> str:
        return self.layout.manifest_key(table, partition)

    def describe(self, key: str) -> str:
        return self.storage.describe(key)

    def open_stage(self, table: str, run_id: str) -> Stage:
        return Stage(self, table, run_id)

    # reading ------------------------------------------------------------------------------------

    def manifest(self, table: str, partition: str) -> Manifest | None:
        return self.versioned_manifest(table, partition)[0]

    def versioned_manifest(self, table: str, partition: str) -> tuple[Manifest | None, str | None]:
        """The partition's manifest, checked to name only keys of its partition, and its version."""
        key = self.manifest_key(table, partition)
        found = self.storage.get(key)
        if found is None:
            return None, None
        return self._checked(table, partition, key, found), found.version

    def _checked(self, table: str, partition: str, key: str, found: Versioned) -> Manifest:
        try:
            manifest = Manifest.decode(found.data)
        except msgspec.DecodeError as exc:
            raise CorruptManifestError(
                f"the manifest {self.describe(key)} is not readable ({exc}): nothing was deleted; "
                "restore it or delete it and export the partition again."
            ) from exc
        folders = [(manifest.files, self.data_prefix(table, partition))]
        if manifest.identity_edges:
            folders.append((manifest.identity_edges, self.edges_prefix(partition)))
        for items, folder in folders:
            for item in items:
                name = item.key[len(folder) :] if item.key.startswith(folder) else ""
                if not name or "/" in name or ".." in item.key.split("/") or item.key.startswith("/"):
                    raise CorruptManifestError(
                        f"the manifest {self.describe(key)} names {item.key!r}, outside its partition "
                        f"{folder}: nothing was read or deleted; restore the manifest or delete it and "
                        "export the partition again."
                    )
        return manifest

    def partitions(self, table: str) -> list[str]:
        listed = self.storage.list(self.layout.manifests_prefix(table))
        found = {i.key: self.layout.manifest_partition(table, i.key) for i in listed}
        for key in sorted(
            k for k, partition in found.items() if partition is None and k.endswith(MANIFEST_SUFFIX)
        ):
            log.warning("ignoring %s: not a partition's manifest", self.describe(key))
        return sorted(partition for partition in found.values() if partition is not None)

    # committing ---------------------------------------------------------------------------------

    def commit(
        self, stage: Stage, partition: str, manifest: Manifest, expected: Manifest | None = None
    ) -> Manifest:
        """Atomically replace ``partition`` with the staged files; returns the manifest written.

        Files already named by ``manifest`` stay committed as they are (a purge keeps the files it
        did not have to rewrite). With ``expected``, the commit happens only if the partition's
        manifest was that one when the run started (``ConcurrentCommitError`` otherwise).
        """
        base, version = stage.base(partition)
        if expected is not None and base != expected:
            self._lost(stage, partition, base, "nothing was changed")

        def build(
            files: tuple[ManifestFile, ...], edges: tuple[ManifestFile, ...], sequence: int
        ) -> Manifest:
            extended = (manifest.files + files, manifest.identity_edges + edges)
            return msgspec.structs.replace(
                manifest, files=extended[0], identity_edges=extended[1], sequence=sequence
            )

        final = self._switch(stage, partition, version, base, manifest.run_id, build)
        for hook in self.hooks:
            hook.committed(At(self, stage.table, partition), final, None)
        return final

    def append(self, stage: Stage, partition: str, increment: Manifest, base: Manifest) -> Manifest:
        """Add the staged files to the committed ones of ``partition`` (an hourly increment).

        ``base`` is the manifest the increment was computed against (its watermark); if another run
        committed the partition since, nothing is added and ``ConcurrentCommitError`` says so.
        """
        started, version = stage.base(partition)
        if started != base:
            self._lost(stage, partition, started, "nothing was added; the next run exports it again")
        final = self._switch(
            stage, partition, version, base, increment.run_id, lambda f, e, _: combined(base, increment, f, e)
        )
        for hook in self.hooks:
            hook.committed(At(self, stage.table, partition), final, base)
        return final

    def _switch(
        self,
        stage: Stage,
        partition: str,
        version: str | None,
        base: Manifest | None,
        run_id: str,
        build: Callable[[tuple[ManifestFile, ...], tuple[ManifestFile, ...], int], Manifest],
    ) -> Manifest:
        """Publish the staged files, then switch the manifest with one conditional write."""
        table = stage.table
        current, now = self.versioned_manifest(table, partition)
        if now != version:  # lost already: publish nothing
            self._lost(stage, partition, current, "nothing was changed; the retry starts from that version")
        sequence = (base.sequence if base else 0) + 1
        run = f"{run_id.replace('-', '')[:16]}-s{sequence}"
        files = self._publish(stage.files.get(partition, []), self.data_prefix(table, partition), run)
        staged_edges = stage.edges.get(partition, [])  # only event days have identity edges
        edges = self._publish(staged_edges, self.edges_prefix(partition), run) if staged_edges else ()
        final = build(files, edges, sequence)
        key = self.manifest_key(table, partition)
        try:
            self.storage.put_bytes(key, final.encode(), create=version is None, if_version=version)
        except PreconditionFailedError:
            current, _ = self.versioned_manifest(table, partition)
            if current != final:  # a retried write whose first attempt landed reads back as ours
                self._delete_own([f.key for f in (*files, *edges)], table, partition)
                self._lost(
                    stage, partition, current, "its files were removed; the retry starts from that version"
                )
        self._remove_unlisted(table, partition, final)
        return final

    def _lost(self, stage: Stage, partition: str, current: Manifest | None, outcome: str) -> None:
        stage.bases.pop(partition, None)
        raise ConcurrentCommitError(
            f"{stage.table} {partition} was committed by run {current.run_id if current else None} "
            f"while this run worked on it: {outcome}."
        )

    def _publish(self, staged: list[ManifestFile], folder: str, run: str) -> tuple[ManifestFile, ...]:
        """Move staged files to final names that are unique per run, so nothing committed is overwritten."""
        published = []
        for item in staged:
            name = tagged(item.key.rsplit("/", 1)[1], run)
            self.storage.move(item.key, folder + name)
            published.append(ManifestFile(folder + name, item.rows, item.bytes))
        return tuple(published)

    # cleaning -----------------------------------------------------------------------------------

    def repair(self, table: str, partition: str) -> int:
        """Remove files of ``partition`` that its manifest does not name, and let every hook finish
        what a crashed run left undone; returns how many files were removed."""
        removed = self._repair_files(table, partition)
        if self.hooks:
            manifest = self.manifest(table, partition)
            for hook in self.hooks:
                hook.repaired(At(self, table, partition), manifest)
        return removed

    def _repair_files(self, table: str, partition: str) -> int:
        """Remove files of ``partition`` that its manifest does not name; returns how many.

        Files of a run still working on the partition may sit there too: the manifest is first
        rewritten with the next sequence (``If-Match``), so such a run can no longer commit and its
        files are garbage. With no manifest, only files of runs that cannot win are removed.
        """
        manifest, version = self.versioned_manifest(table, partition)
        if manifest is None or not self._unlisted(table, partition, manifest, manifest.sequence + 1):
            return self._remove_unlisted(table, partition, manifest)
        fenced = msgspec.structs.replace(manifest, sequence=manifest.sequence + 1)
        try:
            self.storage.put_bytes(self.manifest_key(table, partition), fenced.encode(), if_version=version)
        except PreconditionFailedError:
            return 0  # another run committed meanwhile: it cleans the partition
        return self._remove_unlisted(table, partition, fenced)

    def _remove_unlisted(self, table: str, partition: str, manifest: Manifest | None) -> int:
        unlisted = self._unlisted(table, partition, manifest, manifest.sequence if manifest else 0)
        self._delete_own(unlisted, table, partition)
        return len(unlisted)

    def _unlisted(self, table: str, partition: str, manifest: Manifest | None, upto: int) -> list[str]:
        """Files of the partition's folders not named by ``manifest`` and tagged at most ``upto``."""
        keep = {f.key for f in (*manifest.files, *manifest.identity_edges)} if manifest else set()
        folders = [self.data_prefix(table, partition)]
        if table == EVENTS_TABLE and is_day(partition):
            folders.append(self.edges_prefix(partition))
        return [
            k
            for folder in folders
            for k in self._direct_files(folder)
            if k not in keep and sequence_of(k) <= upto
        ]

    def _delete_own(self, keys: list[str], table: str, partition: str) -> None:
        """Delete ``keys`` after checking every one lies directly in a folder of the partition."""
        folders = {
            self.data_prefix(table, partition),
            self.edges_prefix(partition) if table == EVENTS_TABLE else "",
        }
        for key in keys:
            if check_key(key).rsplit("/", 1)[0] + "/" not in folders:
                raise OutsideDestinationError(
                    f"{self.describe(key)} does not lie in a folder of {table} {partition}: nothing was deleted."
                )
        self.storage.delete(keys)

    def _direct_files(self, prefix: str) -> list[str]:
        # only files directly in the partition folder: `_rejects/` and other partitions are not ours
        return [i.key for i in self.storage.list(prefix) if "/" not in i.key[len(prefix) :]]

    def remove_stale_staging(self, older_than_seconds: float = STALE_STAGING_SECONDS) -> int:
        cutoff = time.time() - older_than_seconds
        prefix = self.layout.staging_prefix()
        stale = [i.key for i in self.storage.list(prefix) if i.modified < cutoff]
        self.storage.delete(stale)
        self.storage.prune(prefix)
        return len(stale)

    def forget_history(self) -> int:
        """Remove data hooks keep only for time travel (table formats do; plain files keep none)."""
        return sum(hook.forget() for hook in self.hooks if isinstance(hook, KeepsHistory))

    def publish_status(self, table: pa.Table) -> int:
        """Hand the sync status to every hook that publishes it (a warehouse's view); returns how many did."""
        publishers = [hook for hook in self.hooks if isinstance(hook, PublishesStatus)]
        for hook in publishers:
            hook.publish_status(table)
        return len(publishers)

    def put_rejects(self, table: str, name: str, lines: bytes) -> str:
        key = self.layout.rejects_key(table, name)
        self.storage.put_bytes(key, lines)
        return key
