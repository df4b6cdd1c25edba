"""Whether a committed day's files are still what its manifest says: present, and (re-read) the same rows.

Two depths: ``lost_files`` lists the day's folder once and names every file the manifest lists that
is gone (cheap: what ``make status`` does every time); ``verify_day`` re-reads every file and
compares its row count with the manifest's, and the day's fingerprint (``tasks.lake.manifest``: the
sum of ``row_hash`` over the rows, modulo 2**64) with the manifest's. Either returns one sentence
naming what changed and what mending it takes, or None when nothing did. Nothing here writes.
"""

from __future__ import annotations

from tasks.errors import MissingCommittedFileError
from tasks.lake.commit import Lake
from tasks.lake.committed import read_committed
from tasks.lake.files import FileFormat, event_batches
from tasks.lake.manifest import Manifest, fingerprint_hex
from tasks.pipeline.guard import describe, manifest_filter
from tasks.pipeline.parse import row_hash
from tasks.schema import EVENTS_TABLE


def lost_files(lake: Lake, manifest: Manifest) -> list[str]:
    """The keys the manifest names that the day's folder no longer holds."""
    present = {i.key for i in lake.storage.list(lake.data_prefix(EVENTS_TABLE, manifest.partition))}
    return [f.key for f in manifest.files if f.key not in present]


def verify_day(lake: Lake, manifest: Manifest) -> str | None:
    """Re-read every file of the day: None when rows and fingerprint match the manifest."""
    lost: list[str] = []
    changed: list[str] = []
    total = 0
    fmt = FileFormat(manifest.format)
    for item in manifest.files:
        try:
            data = read_committed(lake.storage, item.key)
        except MissingCommittedFileError:
            lost.append(item.key)
            continue
        rows = 0
        try:
            for batch in event_batches(data, fmt):
                rows += batch.height
                total += sum(map(row_hash, batch["event_name"], (p.encode() for p in batch["properties"])))
        except Exception:  # any unreadable file is a changed one: the sentence names it
            changed.append(f"{item.key} (unreadable)")
            continue
        if rows != item.rows:
            changed.append(f"{item.key} ({rows} rows, the manifest says {item.rows})")
    if not lost and not changed and fingerprint_hex(total) != manifest.fingerprint:
        changed.append(
            f"the day's rows (fingerprint {fingerprint_hex(total)}, the manifest says {manifest.fingerprint})"
        )
    return damage(lake, manifest, lost, changed)


def damage(lake: Lake, manifest: Manifest, lost: list[str], changed: list[str]) -> str | None:
    """One sentence: what was lost or changed outside the pipeline, and what repair or a re-export does."""
    if not lost and not changed:
        return None
    found = []
    if lost:
        found.append(
            f"{len(lost)} committed file(s) are gone ({lake.describe(lost[0])}{', …' if len(lost) > 1 else ''})"
        )
    if changed:
        found.append(
            f"{len(changed)} changed outside the pipeline ({changed[0]}{', …' if len(changed) > 1 else ''})"
        )
    day = manifest.partition
    names, where = manifest_filter(manifest)
    how = f"PARAMS='from_date={day} to_date={day}"
    if names is not None:
        how += f" event_names={','.join(names)}"
    how += "'"
    filtered = (
        "" if names is None and where is None else f" with the day's filter ({describe((names, where))})"
    )
    return (
        f"{day}: {' and '.join(found)}; repair cannot bring them back (it only removes files the manifest does "
        f"not name), exporting the day again{filtered} replaces it whole: "
        f"make run DEPLOYMENT=mixpanel-events/events-daily {how}"
    )
