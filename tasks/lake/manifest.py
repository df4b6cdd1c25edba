"""The manifest: the committed truth of one (table, partition), stored beside the data.

The fingerprint makes "same data?" a cheap question: each row contributes
``xxh3_64(properties, seed=xxh3_64(event_name))`` and the partition's fingerprint is the sum modulo
2**64, so it does not depend on row order or on how rows were split into files, and it changes
when a row is added, dropped, duplicated or altered.
"""

from __future__ import annotations

import msgspec

FINGERPRINT_ALGORITHM = "sum mod 2^64 of xxh3_64(properties, seed=xxh3_64(event_name))"
SCHEMA_VERSION = 1
MASK64 = (1 << 64) - 1


class ManifestFile(msgspec.Struct, frozen=True):
    key: str
    rows: int
    bytes: int


class PurgeNote(msgspec.Struct, frozen=True):
    """The GDPR purge that committed a version, and the rows it removed from the version before."""

    id: str
    rows: int
    edges: int = 0


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    table: str
    partition: str
    files: tuple[ManifestFile, ...]
    rows: int
    identity_edges: tuple[ManifestFile, ...] = ()
    fingerprint: str
    format: str
    run_id: str
    exported_at: str
    max_processing_time_ms: int | None = None
    rejected_lines: int = 0
    source_from_date: str | None = None
    source_to_date: str | None = None
    time_mode: str = "utc"
    timezone: str = "UTC"
    flow_run_id: str | None = None
    # hourly runs add their rows to the day as new files: how many such increments the day holds
    increments: int = 0
    # Mixpanel's deduplicated count per event name of what the export returned (before the GDPR
    # registry's ids were left out): what the query API's per-day counts are compared against
    event_counts: dict[str, int] | None = None
    # rows removed since the export by GDPR purges (the export's own filtering is not counted)
    purged_rows: int = 0
    # the most rows the partition has held, net of GDPR purges: what the shrink guard compares a new
    # version with (tasks.pipeline.guard), so losses smaller than its tolerance cannot add up unseen;
    # None in manifests written before it was kept (their ``rows`` stand for it, see ``held``)
    held_most: int | None = None
    # set by a purge's commit: its audit counts these, so rows a crashed purge removed are audited by
    # the run that completes it (tasks.sync.gdpr)
    purge: PurgeNote | None = None
    # the run's filter, part of the day's identity (tasks.pipeline.guard): sorted event names (None: every
    # event) and the user's where (None: none); the hourly watermark is not a filter
    event_names: tuple[str, ...] | None = None
    where: str | None = None
    # how many versions of the partition were committed before this one, plus one: published files
    # carry the sequence they are meant for (part-<run>-s<sequence>-…), so a commit knows which
    # unlisted files belong to runs that can no longer win (see tasks.lake.commit)
    sequence: int = 0
    fingerprint_algorithm: str = FINGERPRINT_ALGORITHM
    schema_version: int = SCHEMA_VERSION

    def encode(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        return msgspec.json.decode(data, type=cls)


def fingerprint_hex(total: int) -> str:
    return f"{total & MASK64:016x}"


def combined(
    base: Manifest, increment: Manifest, files: tuple[ManifestFile, ...], edges: tuple[ManifestFile, ...]
) -> Manifest:
    """``base`` plus an increment's new files: rows and fingerprints add up (the fingerprint is a sum)."""
    marks = [m for m in (base.max_processing_time_ms, increment.max_processing_time_ms) if m is not None]
    return msgspec.structs.replace(
        increment,
        files=base.files + files,
        identity_edges=base.identity_edges + edges,
        rows=base.rows + increment.rows,
        fingerprint=fingerprint_hex(int(base.fingerprint, 16) + int(increment.fingerprint, 16)),
        max_processing_time_ms=max(marks) if marks else None,
        rejected_lines=base.rejected_lines + increment.rejected_lines,
        source_from_date=base.source_from_date,
        increments=base.increments + 1,
        # a duplicate may straddle base and increment: the exact count is recomputed when needed
        event_counts=None,
        purged_rows=base.purged_rows,
        held_most=max(held(base), base.rows + increment.rows),
        sequence=base.sequence + 1,
    )


def held(manifest: Manifest) -> int:
    """The most rows ``manifest``'s partition has held (net of purges); older manifests: their rows."""
    return manifest.rows if manifest.held_most is None else max(manifest.held_most, manifest.rows)
