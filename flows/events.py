"""The events flow: Mixpanel's Raw Event Export into day partitions of ``mp_master_event``."""

from __future__ import annotations

import threading
from typing import Literal

from prefect import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.destinations.catalog import AnyDestination
from blocks.mixpanel import MixpanelCredentials
from flows.exporting import (
    MAX_WORKERS,
    export_days_task,
    export_range,
    resolve_range,
    settings_for,
    summarize,
    without_registered_ids,
)
from flows.limits import export_slot
from flows.params import AtLeastOne, AtLeastZero, OptionalDay, check_concurrency
from flows.runtime import pipeline_flow
from flows.targets import connect
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import DayResult
from tasks.pipeline.plan import days_between
from tasks.pipeline.prepare import prepare_days
from tasks.schema import EVENTS_TABLE


@pipeline_flow(
    name="mixpanel-events",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS),
    log_prints=True,
)
def events(
    credentials: MixpanelCredentials,
    destination: AnyDestination | None = None,
    from_date: OptionalDay = None,
    to_date: OptionalDay = None,
    file_format: Literal["parquet", "jsonl.gz"] = "parquet",
    days_per_request: AtLeastOne = 7,
    max_concurrent_requests: AtLeastOne = 4,
    max_rejected_lines: AtLeastZero = 0,
    event_names: list[str] | None = None,
    allow_shrink: bool = False,
    force: bool = False,
) -> list[dict[str, object]]:
    """Export Mixpanel events into day partitions of mp_master_event, each day replaced atomically.

    Args:
        credentials: The Mixpanel project to export (a MixpanelCredentials block).
        destination: Where the tables go: the destination block the deployment names (after `make deploy`:
            `local`, on ./data); pick another block to write elsewhere.
        from_date: First day to export (YYYY-MM-DD), in the project's calendar (any past day); left
            empty: yesterday.
        to_date: Last day to export (YYYY-MM-DD), inclusive; left empty: yesterday (or from_date if
            that is later).
        file_format: parquet (zstd, the default) or jsonl.gz (Mixpanel's own pipeline format).
        days_per_request: Consecutive days fetched by one export request (Mixpanel allows 60 per hour).
        max_concurrent_requests: Export requests this run keeps in flight at once.
        max_rejected_lines: Malformed lines tolerated per request before its days fail (0: none).
        event_names: Export only these event names; empty exports every event. The filter is recorded in
            each day's manifest, and a day committed with a wider filter is not replaced unless forced.
        allow_shrink: Replace a committed day even when the new export holds markedly fewer rows (under
            90%, or none) and Mixpanel's own count of the day does not confirm it.
        force: Replace days committed with a filter this run's event_names do not cover.
    """
    check_concurrency(max_concurrent_requests)
    start, end = resolve_range(credentials, from_date, to_date)
    lake = connect(credentials, destination)
    return export_range(
        credentials,
        lake,
        days_between(start, end),
        settings_for(
            credentials, file_format, max_rejected_lines, event_names, allow_shrink=allow_shrink, force=force
        ),
        days_per_request,
        max_concurrent_requests,
    )


@pipeline_flow(name="mixpanel-events-hourly", log_prints=True)
def events_hourly(
    credentials: MixpanelCredentials,
    destination: AnyDestination | None = None,
    file_format: Literal["parquet", "jsonl.gz"] = "parquet",
) -> list[dict[str, object]]:
    """Add to yesterday and today what Mixpanel processed since the last run (hourly increments).

    Each day's manifest keeps a watermark (the largest mp_processing_time_ms it holds); this run
    exports only the events processed after it (Mixpanel's `where` on mp_processing_time_ms) and adds
    them to the day as new files, committed like any other change. A day not exported yet is exported
    whole. The daily run later replaces the closed day with a clean full export.

    Args:
        credentials: The Mixpanel project to export (a MixpanelCredentials block).
        destination: Where the tables go: the destination block the deployment names (after `make deploy`:
            `local`, on ./data); pick another block to write elsewhere.
        file_format: parquet (zstd, the default) or jsonl.gz; use the daily run's format.
    """
    logger = get_run_logger()
    calendar = credentials.calendar()
    days = [calendar.yesterday(), calendar.today()]
    lake = connect(credentials, destination)
    settings = without_registered_ids(
        settings_for(credentials, file_format, 0, None), credentials.project_id, lake
    )
    prepare_days(lake, days, settings)  # an unfiltered run is refused no day
    gate = threading.Semaphore(1)
    results: list[DayResult] = []
    with MixpanelClient(credentials.api_settings(), notify=logger.warning, export_gate=export_slot) as client:
        for day in days:
            base = lake.manifest(EVENTS_TABLE, day.isoformat())
            if base is not None and (base.event_names is not None or base.where is not None):
                # unfiltered increments on a filtered day would mix two filters: redo the day whole
                logger.info("%s: committed with a filter, exported whole", day)
                base = None
            mark = "none (whole day)" if base is None else base.max_processing_time_ms
            logger.info("%s: adding events processed after watermark %s", day, mark)
            results += export_days_task(client, lake, [day], settings, str(day), gate, base)
    summarize(results, {}, len(days))
    return [r.as_row() for r in results]
