"""Warehouses as destinations: committed files first, then each committed partition loaded atomically.

A warehouse destination is a file destination (the staging lake: a local folder or a bucket, with
the same layout, manifests and commit protocol) plus a ``Loader``. Every commit of a partition is
followed by its load: an event day replaced in one warehouse transaction, a whole table (people,
identity) swapped in one. The warehouse records which manifest it loaded per partition in its own
``_mp_manifests`` table, in the same transaction as the data, so a load that failed after the files
were committed is detected and redone by the next ``repair`` of the partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from tasks.errors import FatalError
from tasks.lake.commit import ObjectStoreDestination, Stage
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

    def local_paths(self) -> list[Path]:
        if self.paths is None:
            raise FatalError(
                f"the files of {self.table} {self.name} are not on local disk: this warehouse loads from a "
                "local folder."
            )
        return self.paths

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


class WarehouseDestination(ObjectStoreDestination):
    """Files committed as for any destination, then each committed partition loaded by ``loader``."""

    def __init__(self, storage: Store, project_id: int, loader: Loader) -> None:
        super().__init__(storage, project_id)
        self.loader = loader

    def commit(
        self, stage: Stage, partition: str, manifest: Manifest, expected: Manifest | None = None
    ) -> Manifest:
        final = super().commit(stage, partition, manifest, expected)
        self._load(stage.table, partition, final)
        return final

    def append(self, stage: Stage, partition: str, increment: Manifest, base: Manifest) -> Manifest:
        final = super().append(stage, partition, increment, base)
        self._load(stage.table, partition, final)
        return final

    def repair(self, table: str, partition: str) -> int:
        removed = super().repair(table, partition)
        manifest = self.manifest(table, partition)
        if manifest is not None and self.loader.loaded_run(table, partition) != manifest.run_id:
            self._load(table, partition, manifest)  # the files were committed, the load was not
        return removed

    def _load(self, table: str, partition: str, manifest: Manifest) -> None:
        keys = [item.key for item in manifest.files]
        paths = [self.storage.local_path(key) for key in keys]
        local = None if any(p is None for p in paths) else [p for p in paths if p is not None]
        self.loader.load(Partition(table, partition, manifest, [self.describe(k) for k in keys], local))
