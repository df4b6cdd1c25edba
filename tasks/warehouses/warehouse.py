"""Warehouses as destinations: committed files first, then each committed partition loaded atomically.

A warehouse destination is a file destination (the staging lake: a local folder or a bucket, with
the same layout, manifests and commit protocol) plus a ``Loader``. Every commit of a partition is
followed by its load: an event day replaced in one warehouse transaction, a whole table (people,
identity) swapped in one. The warehouse records which manifest it loaded per partition in its own
``_mp_manifests`` table, in the same transaction as the data, so a load that failed after the files
were committed is detected and redone by the next ``repair`` of the partition.

Beside the tables each warehouse keeps two views, created with the tables at ``check`` (and so before
any load; the mappings table exists, empty, from then on, so the events view works before the first
identity run): ``mp_master_event_resolved``, the events with their identity-resolved user, and
``mp_sync_status`` over ``_mp_sync_status``, whose rows ``publish_status`` replaces whole in one
transaction. Views are created only when absent (``IF NOT EXISTS``): concurrent checks never fail on
each other and a user's grants on a view are kept; their column lists are fixed here.
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
from tasks.lake.commit import At, Lake
from tasks.lake.committed import download_committed
from tasks.lake.manifest import Manifest
from tasks.lake.store import Store
from tasks.schema import EVENT_COLUMNS, SYNC_STATUS_SCHEMA, is_day

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


def resolved_events_query(events: str, mappings: str) -> str:
    """The query of ``RESOLVED_EVENTS_VIEW`` over the events and mappings tables (names as the warehouse
    needs them in a view): every event once, with ``resolved_distinct_id`` the mappings' where they have
    the event's ``distinct_id`` (one row per id), else the event's own ``distinct_id``."""
    columns = ", ".join(f"e.{name}" for name in EVENT_COLUMNS)
    return (
        f"SELECT {columns}, COALESCE(m.resolved_distinct_id, e.distinct_id) AS resolved_distinct_id "
        f"FROM {events} e LEFT JOIN {mappings} m ON e.distinct_id = m.distinct_id"
    )


def sync_status_query(table: str) -> str:
    """The query of ``SYNC_STATUS_VIEW``: the status table's columns, named one by one, in schema order."""
    return f"SELECT {', '.join(SYNC_STATUS_SCHEMA.names)} FROM {table}"


# the kinds of SYNC_STATUS_SCHEMA's Arrow types: each warehouse's TYPES maps them, as it maps TABLE_COLUMNS'
_STATUS_KINDS = {
    pa.date32(): "date",
    pa.int64(): "int64",
    pa.string(): "text",
    pa.timestamp("us", tz="UTC"): "timestamp",
}


def status_columns(types: dict[str, str]) -> list[tuple[str, str]]:
    """The status table's columns with the warehouse's type for each kind (date, int64, text, timestamp)."""
    return [(field.name, types[_STATUS_KINDS[field.type]]) for field in SYNC_STATUS_SCHEMA]


def status_rows(table: pa.Table) -> pa.Table:
    """``table`` as exactly SYNC_STATUS_SCHEMA (its columns in order, cast), or one sentence why not."""
    missing = [name for name in SYNC_STATUS_SCHEMA.names if name not in table.column_names]
    if missing:
        raise FatalError(f"the sync status lacks the column(s) {', '.join(missing)}: nothing was published.")
    try:
        return table.select(SYNC_STATUS_SCHEMA.names).cast(SYNC_STATUS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FatalError(
            f"the sync status does not fit its schema ({str(exc).splitlines()[0]}): nothing was published."
        ) from exc


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
        """Replace the rows of ``_mp_sync_status`` with ``table``'s (SYNC_STATUS_SCHEMA) in one transaction,
        creating the table and its view ``mp_sync_status`` when absent."""
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

    def _load(self, lake: Lake, table: str, partition: str, manifest: Manifest) -> None:
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
        paths.append(download_committed(storage, key, path))
    return paths
