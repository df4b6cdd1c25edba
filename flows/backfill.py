"""The backfill flow: a range of past days, resumable, fanned out over workers for large ranges."""

from __future__ import annotations

import functools
import time
from datetime import date
from typing import Any, Literal
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import deployment
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.destinations.catalog import AnyDestination
from blocks.mixpanel import MixpanelCredentials
from flows.exporting import MAX_WORKERS, export_range, resolve_range, settings_for
from flows.outage import OUTAGE
from flows.params import AtLeastOne, AtLeastZero, Day, OptionalDay, check_concurrency
from flows.runtime import pipeline_flow, synchronous
from flows.targets import connect
from tasks.errors import PipelineError
from tasks.lake.commit import Lake
from tasks.pipeline.plan import days_between, group_days, plan_backfill
from tasks.pipeline.resume import is_complete
from tasks.schema import EVENTS_TABLE

POLL_SECONDS = 2.0


@pipeline_flow(
    name="mixpanel-backfill",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS),
    log_prints=True,
)
def backfill(
    credentials: MixpanelCredentials,
    from_date: Day,
    destination: AnyDestination | None = None,
    to_date: OptionalDay = None,
    force: bool = False,
    days_per_request: AtLeastOne = 7,
    days_per_run: AtLeastZero = 0,
    max_concurrent_requests: AtLeastOne = 4,
    file_format: Literal["parquet", "jsonl.gz"] = "parquet",
    allow_shrink: bool = False,
) -> dict[str, Any]:
    """Export a range of past days into mp_master_event; a re-run skips the days already complete.

    Args:
        credentials: The Mixpanel project to export (a MixpanelCredentials block).
        from_date: First day (YYYY-MM-DD), in the project's calendar; any past day (all of the project's history;
            days before the project existed are committed empty).
        destination: Where the tables go: the destination block the deployment names (after `make deploy`:
            `local`, on ./data); pick another block to write elsewhere.
        to_date: Last day (YYYY-MM-DD), inclusive; left empty: yesterday.
        force: Re-export days that are already complete (replaced atomically, one by one).
        days_per_request: Consecutive days fetched by one export request.
        days_per_run: Split the days to do into child flow runs of this many days, each run by
            whichever worker of the work pool picks it up (0: all in this run). Needs a deployment.
        max_concurrent_requests: Export requests each run keeps in flight at once.
        file_format: parquet (zstd, the default) or jsonl.gz.
        allow_shrink: Replace a committed day even when the new export holds markedly fewer rows (under
            90%, or none) and Mixpanel's own count of the day does not confirm it.
    """
    check_concurrency(max_concurrent_requests)
    logger = get_run_logger()
    start, end = resolve_range(credentials, from_date, to_date)
    lake = connect(credentials, destination)
    days = days_between(start, end)
    todo = days if force else _incomplete(lake, days, credentials)
    fan_out = days_per_run > 0 and len(todo) > days_per_run and bool(deployment.id)
    plan = plan_backfill(
        start,
        end,
        todo,
        days_per_request,
        credentials.tuning.export_requests_per_hour,
        days_per_run if fan_out else 0,
    )
    logger.info(
        "%d of %d day(s) %s..%s to export in %d request(s): %.2f h of the %d/hour export budget",
        len(todo),
        len(days),
        start,
        end,
        plan.requests,
        plan.budget_hours,
        plan.requests_per_hour,
    )
    create_markdown_artifact(
        plan.markdown(), key="mixpanel-backfill-plan", description=f"Backfill plan {start}..{end}"
    )
    if not todo:
        create_progress_artifact(100.0, description=f"Days done: {len(days)} of {len(days)} (all complete)")
        return {"days": len(days), "exported": 0, "skipped": len(days)}
    if fan_out:
        _fan_out(
            lake,
            group_days(todo, days_per_run),
            force,
            days_per_request,
            max_concurrent_requests,
            file_format,
            allow_shrink,
        )
    else:
        settings = settings_for(credentials, file_format, 0, None, allow_shrink=allow_shrink)
        export_range(credentials, lake, todo, settings, days_per_request, max_concurrent_requests)
    return {"days": len(days), "exported": len(todo), "skipped": len(days) - len(todo)}


def _incomplete(lake: Lake, days: list[date], credentials: MixpanelCredentials) -> list[date]:
    zone = credentials.calendar().zone()
    return [d for d in days if not is_complete(lake.manifest(EVENTS_TABLE, d.isoformat()), d, zone)]


def _fan_out(
    lake: Lake,
    chunks: list[list[date]],
    force: bool,
    days_per_request: int,
    max_concurrent: int,
    file_format: str,
    allow_shrink: bool = False,
) -> None:
    """One child flow run of this deployment per chunk; waits for all, with progress on this run."""
    logger = get_run_logger()
    total = sum(map(len, chunks))
    progress = synchronous(create_progress_artifact(0.0, description=_days_done(0, total)))
    children: dict[UUID, list[date]] = {}
    for chunk in chunks:
        parameters = {
            "from_date": chunk[0].isoformat(),
            "to_date": chunk[-1].isoformat(),
            "force": force,
            "days_per_request": days_per_request,
            "days_per_run": 0,
            "max_concurrent_requests": max_concurrent,
            "file_format": file_format,
            "allow_shrink": allow_shrink,
        }
        # credentials and destination: the deployment's own (block references), never copied here
        child = synchronous(
            run_deployment(
                UUID(str(deployment.id)),
                parameters=parameters,
                timeout=0,
                flow_run_name=f"backfill {chunk[0]}..{chunk[-1]}",
            )
        )
        children[child.id] = chunk
    logger.info("started %d child run(s) for %d day(s)", len(children), total)
    states = _wait(children, progress, total)
    # each child has its own summary; the parent's gathers every day of the backfill in one table
    OUTAGE.required(
        lambda: create_table_artifact(
            key="mixpanel-backfill-summary",
            table=backfill_summary(lake, children, states),
            description=f"{sum(len(children[r]) for r, s in states.items() if s == 'Completed')} of {total} day(s) "
            "committed by the child runs",
        )
    )
    failed = [
        f"{chunk[0]}..{chunk[-1]}: {states[run]}"
        for run, chunk in children.items()
        if states[run] != "Completed"
    ]
    if failed:
        raise PipelineError(
            f"{len(failed)} of {len(children)} child run(s) failed ({', '.join(failed)}): "
            "the other days were committed; run the backfill again to retry only the missing days."
        )


def _days_done(done: int, total: int) -> str:
    return f"Days done: {done} of {total}"


def backfill_summary(
    lake: Lake, children: dict[UUID, list[date]], states: dict[UUID, str]
) -> list[dict[str, object]]:
    """One row per day of the fan-out: what its manifest holds now and which child run it fell to."""
    rows: list[dict[str, object]] = []
    for run, chunk in children.items():
        for day in chunk:
            manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
            committed = manifest is not None and manifest.flow_run_id == str(run)
            rows.append(
                {
                    "day": day.isoformat(),
                    "rows": manifest.rows if committed and manifest else None,
                    "files": len(manifest.files) if committed and manifest else None,
                    "bytes": sum(f.bytes for f in manifest.files) if committed and manifest else None,
                    "child run": f"backfill {chunk[0]}..{chunk[-1]}",
                    "state": states[run],
                }
            )
    return sorted(rows, key=lambda row: str(row["day"]))


def _wait(children: dict[UUID, list[date]], progress: UUID, total: int) -> dict[UUID, str]:
    """Until every child ends; returns each one's final state name."""
    pending = dict(children)
    done_days = 0
    states: dict[UUID, str] = {}
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(POLL_SECONDS)
            for run_id, chunk in list(pending.items()):
                # the children go on while the server is away; the parent asks again when it is back
                child = OUTAGE.optional(functools.partial(client.read_flow_run, run_id))
                state = child.state if child else None
                if state is None or not state.is_final():
                    continue
                del pending[run_id]
                states[run_id] = "Completed" if state.is_completed() else (state.name or state.type.value)
                if state.is_completed():
                    done_days += len(chunk)
            OUTAGE.optional(
                functools.partial(
                    update_progress_artifact,
                    progress,
                    100.0 * done_days / total,
                    description=_days_done(done_days, total),
                )
            )
    return states
