"""The output tables, once: their names, columns and types, and what a day partition is.

Names and columns are Mixpanel's Json Pipelines schema, identical in every destination; each
warehouse maps the kinds (text, json, timestamp) to its own types. ``properties`` is always the
JSON text Mixpanel sent, byte for byte; ``time`` the event's UTC instant.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
import pyarrow as pa

EVENTS_TABLE = "mp_master_event"
PEOPLE_TABLE = "mp_people_data"
MAPPINGS_TABLE = "mp_identity_mappings_data"

# the columns of each table, with a kind each warehouse maps to its own type
TABLE_COLUMNS: dict[str, list[tuple[str, str]]] = {
    EVENTS_TABLE: [
        ("device_id", "text"),
        ("distinct_id", "text"),
        ("event_name", "text"),
        ("insert_id", "text"),
        ("properties", "json"),
        ("time", "timestamp"),
        ("user_id", "text"),
    ],
    PEOPLE_TABLE: [("distinct_id", "text"), ("properties", "json")],
    MAPPINGS_TABLE: [("distinct_id", "text"), ("resolved_distinct_id", "text")],
}
EVENT_COLUMNS = tuple(name for name, _ in TABLE_COLUMNS[EVENTS_TABLE])

_ARROW_TYPES: dict[str, Any] = {
    "text": pa.string(),
    "json": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def arrow_schema(table: str) -> pa.Schema:
    """The Parquet schema of ``table``; JSON columns carry ``{"format": "json"}`` metadata."""
    return pa.schema(
        [
            pa.field(name, _ARROW_TYPES[kind], metadata={"format": "json"} if kind == "json" else None)
            for name, kind in TABLE_COLUMNS[table]
        ]
    )


# A destination's sync health, one row per day (tasks/sync/status.py computes it, flows/status.py publishes
# it): warehouses keep the rows of the last status run in SYNC_STATUS_TABLE, replaced whole, and show them
# as SYNC_STATUS_VIEW next to ``_mp_manifests``; RESOLVED_EVENTS_VIEW is the events table with each event's
# identity-resolved user (``resolved_distinct_id`` where the mappings have one, else ``distinct_id``).
SYNC_STATUS_TABLE = "_mp_sync_status"
SYNC_STATUS_VIEW = "mp_sync_status"
RESOLVED_EVENTS_VIEW = "mp_master_event_resolved"
# the states a day can be in (what each means: tasks/sync/status.py)
SYNC_STATES = ("in_sync", "differs", "missing", "refused", "purged", "behind", "damaged", "unchecked")
_SYNC_STATUS_FIELDS: list[pa.Field[Any]] = [
    pa.field("day", pa.date32()),
    pa.field("state", pa.string()),
    pa.field("rows_held", pa.int64()),  # null: no committed version of the day
    pa.field("mixpanel_rows", pa.int64()),  # Mixpanel's deduplicated count; null: not known
    # the export's deduplicated count (as Mixpanel counts) - mixpanel_rows, so an in-sync day shows 0
    # whatever duplicates rows_held holds; null when either is unknown
    pa.field("difference", pa.int64()),
    pa.field("exported_at", pa.timestamp("us", tz="UTC")),
    pa.field("checked_at", pa.timestamp("us", tz="UTC")),  # when Mixpanel's count was last asked
    pa.field("filter", pa.string()),  # the day's export filter (``where``/event names), null: none
    pa.field("reason", pa.string()),  # one sentence when the state is not in_sync
    pa.field("computed_at", pa.timestamp("us", tz="UTC")),
]
SYNC_STATUS_SCHEMA = pa.schema(_SYNC_STATUS_FIELDS)

EVENTS_SCHEMA = arrow_schema(EVENTS_TABLE)
PEOPLE_SCHEMA = arrow_schema(PEOPLE_TABLE)
MAPPINGS_SCHEMA = arrow_schema(MAPPINGS_TABLE)
# the mappings as a polars frame (identity resolution, GDPR clusters)
MAPPINGS_FRAME_SCHEMA = pl.Schema({"distinct_id": pl.String, "resolved_distinct_id": pl.String})


def typed_columns(table: str, types: dict[str, str]) -> list[tuple[str, str]]:
    """``table``'s columns with the warehouse's type for each kind (text, json, timestamp)."""
    return [(name, types[kind]) for name, kind in TABLE_COLUMNS[table]]


def empty_mappings() -> pl.DataFrame:
    return pl.DataFrame(schema=MAPPINGS_FRAME_SCHEMA)


# the one partition of every table that is not day-partitioned (people, identity mappings)
WHOLE_PARTITION = "all"


def is_partition(table: str, partition: str) -> bool:
    """The events table's partitions are real ISO days, every other table's only one is ``all``: a
    name outside that (a hand-made ``all.json`` among the days) never names a partition of ``table``."""
    return is_day(partition) if table == EVENTS_TABLE else partition == WHOLE_PARTITION


def is_day(partition: str) -> bool:
    """A real ISO date ``YYYY-MM-DD`` (not merely ten characters with dashes): a day partition of
    ``mp_master_event``; the whole tables have one partition, ``all``."""
    if len(partition) != 10 or partition[4] != "-" or partition[7] != "-":
        return False
    try:
        return date.fromisoformat(partition).isoformat() == partition
    except ValueError:
        return False
