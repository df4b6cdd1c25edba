"""Which rows belong to a set of ids: what an export leaves out and a purge removes (GDPR).

An id owns an event row as its distinct_id, user, device (``$device:<id>`` names the device
``<id>``) or as the original id of a hot-shard event; it owns a row of people or mappings by the
columns named.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import polars as pl

from tasks.pipeline.identity import DEVICE_PREFIX

# Mixpanel renames a user's events beyond its hot-shard threshold and blanks distinct_id; the
# original id survives only inside properties
HOTSHARD_KEY = '"mp_original_distinct_id":'


def device_ids(ids: Collection[str]) -> list[str]:
    """``$device:<id>`` (Simplified ID Merge's anonymous ids) name the device ``<id>``."""
    return [i.removeprefix(DEVICE_PREFIX) for i in ids]


def event_rows_of(ids: Collection[str]) -> pl.Expr:
    """True for event rows that belong to one of ``ids``: as distinct_id, user, device or the
    original id of a hot-shard event.

    Duplicate keys: the lifted columns hold the first occurrence of a key (``tasks.pipeline.parse``), but a
    row belongs to every id any occurrence names, so ``properties`` is also searched for each id as
    the value of ``distinct_id``, ``$user_id``, ``$device_id`` or ``mp_original_distinct_id``
    (compact JSON, as Mixpanel exports it; a nested object naming the id matches too)."""
    listed = list(ids)
    needles = [HOTSHARD_KEY + json.dumps(i, ensure_ascii=False) for i in listed]
    for key, values in (
        ('"distinct_id":', listed),
        ('"$user_id":', listed),
        ('"$device_id":', device_ids(listed)),
    ):
        needles += [key + json.dumps(v, ensure_ascii=False) for v in values]
    return (
        pl.col("distinct_id").is_in(listed).fill_null(False)
        | pl.col("user_id").is_in(listed).fill_null(False)
        | pl.col("device_id").is_in(device_ids(listed)).fill_null(False)
        | pl.col("properties").str.contains_any(needles).fill_null(False)
    )


def id_rows_of(ids: Collection[str], columns: tuple[str, ...]) -> pl.Expr:
    listed = list(ids)
    expr = pl.lit(False)
    for column in columns:
        expr = expr | pl.col(column).is_in(listed).fill_null(False)
    return expr
