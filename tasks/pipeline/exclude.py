"""Which rows belong to a set of ids: what an export leaves out and a purge removes (GDPR).

An id owns an event row as its distinct_id, user, device (``$device:<id>`` names the device
``<id>``) or as the original id of a hot-shard event; it owns a row of people or mappings by the
columns named.

A row belongs to an id if ANY occurrence of an id key names it, whatever the spelling: duplicate
keys, spaces around the colon, ``\\u`` escapes in the key or the value. The compact text match
finds what Mixpanel sends; the only rows it can miss (``UNUSUAL_SPELLING``) are decoded with every
duplicate kept, so the hot path stays a column and substring test.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import polars as pl

from tasks.pipeline.identity import DEVICE_PREFIX

# Mixpanel renames a user's events beyond its hot-shard threshold and blanks distinct_id; the
# original id survives only inside properties
HOTSHARD_KEY = '"mp_original_distinct_id":'
ID_KEYS = ("distinct_id", "$user_id", "mp_original_distinct_id")
DEVICE_KEY = "$device_id"
# what the compact needles cannot see: whitespace at an id key's colon, an escape in an id key's
# value, or an escape of a character of an id key's name (encoders never escape ``$``, ``_``, a-z)
UNUSUAL_SPELLING = (
    r'"(?:distinct_id|\$user_id|\$device_id|mp_original_distinct_id)"(?:\s+:|:\s|:"[^"]*\\)'
    r"|\\u00(?:24|5[fF]|6[1-9a-fA-F]|7[0-9aA])"
)


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
        | pl.col("properties").map_batches(
            lambda props: _named_anywhere(props, frozenset(listed), frozenset(device_ids(listed))),
            return_dtype=pl.Boolean,
        )
    )


def _named_anywhere(props: pl.Series, ids: frozenset[str], devices: frozenset[str]) -> pl.Series:
    """Rows spelled so the needles may miss them, decoded with every duplicate key seen."""
    suspects = props.str.contains(UNUSUAL_SPELLING).fill_null(False).arg_true()
    found = pl.Series(props.name, [False] * props.len(), dtype=pl.Boolean)
    if suspects.len() == 0:
        return found
    hits = [_names_any(text, ids, devices) for text in props.gather(suspects).to_list()]
    return found.scatter(suspects, hits)


def _names_any(text: str, ids: frozenset[str], devices: frozenset[str]) -> bool:
    hit = False

    def check(pairs: list[tuple[str, Any]]) -> None:  # called for every object, nested ones too
        nonlocal hit
        for key, value in pairs:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                continue
            text_value = value if isinstance(value, str) else json.dumps(value)
            if (key in ID_KEYS and text_value in ids) or (key == DEVICE_KEY and text_value in devices):
                hit = True

    try:
        json.loads(text, object_pairs_hook=check)
    except (ValueError, RecursionError):  # not JSON, or nested too deep: the parser stores neither
        return False
    return hit


def id_rows_of(ids: Collection[str], columns: tuple[str, ...]) -> pl.Expr:
    listed = list(ids)
    expr = pl.lit(False)
    for column in columns:
        expr = expr | pl.col(column).is_in(listed).fill_null(False)
    return expr
