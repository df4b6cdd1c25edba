"""The nightly reconciliation flow: find the committed days Mixpanel changed since, replace only those.

Late events, imports and deletions change past days after they were exported. Mixpanel's own
pipelines check 10 days back; here the window is a parameter without a cap. Per run: one export
request (late/imported events above each day's watermark) and one query-API request (per-day
counts) for the whole window, then a full re-export of each changed day, committed atomically.
Days that did not change are not touched: their manifests stay byte-identical. Days whose counts still
differ from Mixpanel's once exported again are announced (``flows.alerts.announce_unsynced``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from typing import Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.destinations.catalog import AnyDestination
from blocks.mixpanel import MixpanelCredentials
from flows.alerts import announce_unsynced
from flows.exporting import MAX_WORKERS, export_range, registered_ids, settings_for
from flows.limits import export_slot
from flows.params import AtLeastOne, NonNegativeHours
from flows.runtime import pipeline_flow
from flows.status import status
from flows.targets import blocks_of, connect_all
from tasks.errors import BadRequestError
from tasks.lake.commit import Lake
from tasks.lake.manifest import Manifest
from tasks.mixpanel.calendar import ProjectCalendar
from tasks.mixpanel.client import MixpanelClient, mixpanel_counts
from tasks.pipeline.guard import recorded_counts
from tasks.pipeline.plan import days_between
from tasks.schema import EVENTS_TABLE
from tasks.sync.reconcile import (
    count_difference,
    late_events,
    now_utc,
    settled,
    still_differing,
    unsynced_sentence,
)


@pipeline_flow(
    name="mixpanel-reconcile", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), log_prints=True
)
def reconcile(
    credentials: MixpanelCredentials,
    destinations: list[AnyDestination] | None = None,
    lookback_days: AtLeastOne = 10,
    settle_hours: NonNegativeHours = 24.0,
    check_counts: bool = True,
    days_per_request: AtLeastOne = 7,
    max_concurrent_requests: AtLeastOne = 4,
) -> list[dict[str, object]]:
    """Re-export the committed days that changed in Mixpanel (late events, imports, deletions).

    Args:
        credentials: The Mixpanel project (a MixpanelCredentials block).
        destinations: Every destination to keep in sync: the blocks the deployment lists in prefect.yaml;
            add or remove blocks here for this run.
        lookback_days: How many days back from yesterday to check (no upper limit; Mixpanel's own: 10).
        settle_hours: A day is checked only once this many hours have passed since its export.
        check_counts: Also compare Mixpanel's per-day counts (query API) to find deleted events.
        days_per_request: Consecutive changed days fetched by one export request.
        max_concurrent_requests: Export requests kept in flight at once.
    """
    logger = get_run_logger()
    if lookback_days < 1 or settle_hours < 0:
        raise BadRequestError(
            f"lookback_days must be at least 1 and settle_hours at least 0 (got {lookback_days}, {settle_hours})."
        )
    lakes = connect_all(credentials, destinations)
    calendar = credentials.calendar()
    yesterday = calendar.yesterday()
    window = days_between(yesterday - timedelta(days=lookback_days - 1), yesterday)
    checked = [_settled_days(lake, window, settle_hours) for lake in lakes]
    days = sorted({day for one in checked for day in one})
    logger.info(
        "checking %d settled day(s) of %s..%s in %d destination(s)",
        len(days),
        window[0],
        window[-1],
        len(lakes),
    )
    if not days:
        _report([], f"no settled committed day in {window[0]}..{window[-1]}")
        _status_of(credentials, destinations)
        return []
    changes, theirs = _find_changes(
        credentials, lakes, checked, check_counts and _counts_compare(calendar, logger.warning)
    )
    rows = _replace(credentials, lakes, checked, changes, days_per_request, max_concurrent_requests)
    _report(rows, f"{len({r['day'] for r in rows})} of {len(days)} checked day(s) changed")
    _tell_unsynced(str(credentials.project_id), lakes, changes, theirs)
    _status_of(credentials, destinations)
    return rows


def _status_of(credentials: MixpanelCredentials, destinations: list[AnyDestination] | None) -> None:
    """The status flow of each destination, as it stands after this reconciliation (flows/status.py); a
    status that cannot be drawn (a destination with no committed day) is logged, never this run's failure."""
    for destination in blocks_of(destinations):
        state = status(credentials, destination, return_state=True)
        if not state.is_completed():
            get_run_logger().warning("no sync status: %s", state.message)


def _settled_days(lake: Lake, window: list[date], settle_hours: float) -> dict[date, Manifest]:
    now = now_utc()
    wanted = {day.isoformat(): day for day in window}
    out = {}
    for name in lake.partitions(EVENTS_TABLE):
        manifest = lake.manifest(EVENTS_TABLE, name) if name in wanted else None
        if manifest is not None and settled(manifest, now, settle_hours):
            out[wanted[name]] = manifest
    return out


def _counts_compare(calendar: ProjectCalendar, warn: Callable[..., None]) -> bool:
    why = calendar.uncomparable()
    if why is not None:
        warn("count check skipped: %s", why)
    return why is None


def _find_changes(
    credentials: MixpanelCredentials,
    lakes: list[Lake],
    checked: list[dict[date, Manifest]],
    check_counts: bool,
) -> tuple[list[dict[date, str]], dict[date, Counter[str]]]:
    logger = get_run_logger()
    excluded = registered_ids(credentials.project_id, lakes)
    marks = [{day: m.max_processing_time_ms or 0 for day, m in one.items()} for one in checked]
    ours = [
        {day: recorded_counts(lake, m) for day, m in one.items()}
        for lake, one in zip(lakes, checked, strict=True)
    ]
    filters = [{day: m.event_names for day, m in one.items()} for one in checked]
    with MixpanelClient(credentials.api_settings(), notify=logger.warning, export_gate=export_slot) as client:
        late = late_events(client, marks, credentials.calendar().local_zone, excluded, filters)
        theirs: dict[date, Counter[str]] = {}
        if check_counts:
            names = {n for one in ours for counts in one.values() for n in counts}
            theirs = mixpanel_counts(client, sorted({d for one in checked for d in one}), names)
    changes = []
    for one_late, one_ours in zip(late, ours, strict=True):
        found: dict[date, str] = {}
        for day, counts in one_ours.items():
            reasons = []
            if one_late[day]:
                reasons.append(f"{one_late[day]} event(s) processed after the export")
            difference = count_difference(counts, theirs[day]) if day in theirs else None
            if difference is not None:
                reasons.append(f"Mixpanel counts {difference[0]}, the export counted {difference[1]}")
            if reasons:
                found[day] = "; ".join(reasons)
        changes.append(found)
    return changes, theirs


def _replace(
    credentials: MixpanelCredentials,
    lakes: list[Lake],
    checked: list[dict[date, Manifest]],
    changes: list[dict[date, str]],
    days_per_request: int,
    max_concurrent_requests: int,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for lake, one, found in zip(lakes, checked, changes, strict=True):
        # each day is exported again as it was committed: same format, same event filter
        for file_format, names in sorted({(one[d].format, one[d].event_names or ()) for d in found}):
            days = sorted(
                d for d in found if (one[d].format, one[d].event_names or ()) == (file_format, names)
            )
            settings = settings_for(credentials, _format(file_format), 0, list(names) or None)
            after = export_range(credentials, lake, days, settings, days_per_request, max_concurrent_requests)
            rows_after = {str(r["day"]): r["rows"] for r in after}
            rows += [
                {
                    "destination": lake.describe(str(credentials.project_id)),
                    "day": day.isoformat(),
                    "reason": found[day],
                    "rows before": one[day].rows,
                    "rows after": rows_after.get(day.isoformat()),
                }
                for day in days
            ]
    return rows


def _tell_unsynced(
    project: str,
    lakes: list[Lake],
    changes: list[dict[date, str]],
    theirs: dict[date, Counter[str]],
) -> None:
    """Days exported again whose counts still differ from Mixpanel's: a warning and one event for all."""
    days: set[str] = set()
    sentences = []
    for lake, found in zip(lakes, changes, strict=True):
        after = {}
        for day in found:
            manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
            if manifest is not None:
                after[day] = recorded_counts(lake, manifest)
        differing = still_differing(after, theirs)
        if differing:
            days |= {day.isoformat() for day in differing}
            sentences.append(unsynced_sentence(differing, lake.describe(project)))
    if sentences:
        reason = " ".join(sentences)
        get_run_logger().warning("reconciliation: %s", reason)
        announce_unsynced(sorted(days), reason)


def _format(value: str) -> Literal["parquet", "jsonl.gz"]:
    return "jsonl.gz" if value == "jsonl.gz" else "parquet"


def _report(rows: list[dict[str, object]], description: str) -> None:
    get_run_logger().info("reconciliation: %s", description)
    create_table_artifact(
        key="mixpanel-reconcile-summary",
        table=rows or [{"day": None, "reason": description, "rows before": None, "rows after": None}],
        description=description,
    )
