"""Warehouses as destinations: committed files first, then each committed partition loaded atomically.

A warehouse destination is a file destination (the staging lake: a local folder or a bucket, with
the same layout, manifests and commit protocol) plus a ``Loader``. Every commit of a partition is
followed by its load: an event day replaced in one warehouse transaction, a whole table (people,
identity) swapped in one. The warehouse records which manifest it loaded per partition in its own
``_mp_manifests`` table, in the same transaction as the data, so a load that failed after the files
were committed is detected and redone by the next ``repair`` of the partition.
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import pyarrow as pa

from tasks.errors import FatalError
from tasks.lake.commit import At, ObjectStoreDestination
from tasks.lake.manifest import Manifest
from tasks.lake.store import Store
from tasks.schema import is_day

STATE_TABLE = "_mp_manifests"


def manifest_record(partition: Partition) -> tuple[object, ...]:
    """The ``_mp_manifests`` row of a load: table, partition, run, rows, fingerprint, manifest, time."""
    manifest = partition.manifest
    return (
        partition.table,
        partition.name,
        manifest.run_id,
        manifest.rows,
        manifest.fingerprint,
        manifest.encode().decode(),
        datetime.now(tz=UTC),
    )


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def checked_identifier(value: str, what: str) -> str:
    """Identifiers go into SQL text, so only plain names pass: letters, digits, underscores."""
    if not _IDENTIFIER.match(value):
        raise FatalError(
            f"{what} {value!r} is not a plain identifier: use letters, digits and underscores, "
            "starting with a letter or underscore."
        )
    return value


@dataclass(frozen=True)
class Partition:
    """What a loader needs to replace one partition: its rows' files and, for a day, its time range."""

    table: str
    name: str  # an ISO day, or "all" for a whole table
    manifest: Manifest
    uris: list[str]  # the committed files, as the store names them (s3://…, or a local path)
    paths: list[Path] | None  # the same files on local disk; None when the store is remote
    fetch: Callable[[], list[Path]] | None = None  # copies remote files to local scratch

    def local_paths(self) -> list[Path]:
        """The files on local disk: where they are, or copied from the bucket for this load."""
        if self.paths is not None:
            return self.paths
        if self.fetch is None:
            raise FatalError(
                f"the files of {self.table} {self.name} are not on local disk and cannot be fetched."
            )
        return self.fetch()

    @property
    def is_day(self) -> bool:
        return is_day(self.name)

    def time_range(self) -> tuple[datetime, datetime]:
        """The day's instants in UTC: the day is Mixpanel's calendar day in the manifest's timezone."""
        zone = ZoneInfo(self.manifest.timezone)
        day = date.fromisoformat(self.name)
        start = datetime(day.year, day.month, day.day, tzinfo=zone)
        end_day = day + timedelta(days=1)
        end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=zone)
        return start.astimezone(UTC), end.astimezone(UTC)


class Loader(Protocol):
    def check(self) -> None:
        """Fail with one sentence if the warehouse cannot be written (credentials, schema, rights)."""
        ...

    def load(self, partition: Partition) -> None:
        """Replace the partition's rows with its files' rows and record its manifest, atomically."""
        ...

    def loaded_run(self, table: str, partition: str) -> str | None:
        """The run id of the manifest last loaded for the partition, if any."""
        ...

    def publish_status(self, table: pa.Table) -> None:
        """Replace the warehouse's sync status (``_mp_sync_status``, shown as the view ``mp_sync_status``)
        with ``table``'s rows (``tasks.schema.SYNC_STATUS_SCHEMA``), atomically."""
        ...


class WarehouseHook:
    """Each committed partition loaded into the warehouse by ``loader`` (a hook of the lake's
    commits); ``repair`` reloads a partition whose last load did not finish."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def committed(self, at: At, manifest: Manifest, base: Manifest | None) -> None:
        self._load(at.lake, at.table, at.partition, manifest)

    def publish_status(self, table: pa.Table) -> None:
        self.loader.publish_status(table)

    def repaired(self, at: At, manifest: Manifest | None) -> None:
        if manifest is not None and self.loader.loaded_run(at.table, at.partition) != manifest.run_id:
            self._load(
                at.lake, at.table, at.partition, manifest
            )  # the files were committed, the load was not

    def _load(self, lake: ObjectStoreDestination, table: str, partition: str, manifest: Manifest) -> None:
        keys = [item.key for item in manifest.files]
        paths = [lake.storage.local_path(key) for key in keys]
        local = None if any(p is None for p in paths) else [p for p in paths if p is not None]
        uris = [lake.describe(k) for k in keys]
        with tempfile.TemporaryDirectory(prefix="mp-load-") as scratch:
            # files in a bucket are fetched to local scratch only if the loader asks for local files
            fetch = functools.cache(lambda: _download(lake.storage, keys, Path(scratch)))
            self.loader.load(Partition(table, partition, manifest, uris, local, fetch))


def _download(storage: Store, keys: list[str], folder: Path) -> list[Path]:
    paths = []
    for index, key in enumerate(keys):
        path = folder / f"{index:05d}-{key.rsplit('/', 1)[-1]}"
        storage.download(key, path)
        paths.append(path)
    return paths
