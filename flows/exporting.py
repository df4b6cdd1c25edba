"""Exporting days as tasks of a flow: what the events, backfill and reconcile flows share.

A flow parses its parameters and picks its days; `export_range` repairs and checks those days,
groups them into export requests, runs the requests as Prefect tasks (at most
``max_concurrent_requests`` in flight), reports progress and a summary artifact, and raises one
error that says which requests failed. The export itself is `tasks.pipeline.export.export_days`.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import date

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from blocks.gdpr import load_project_registry, save_project_registry
from blocks.mixpanel import MixpanelCredentials
from flows.limits import export_slot
from flows.outage import OUTAGE
from flows.params import check_concurrency
from flows.runtime import Progress
from flows.targets import run_ids
from tasks.errors import BadRequestError, FilterMismatchError, PipelineError
from tasks.lake.commit import Lake
from tasks.lake.files import FileFormat
from tasks.lake.manifest import Manifest
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import DayResult, ExportSettings, export_days
from tasks.pipeline.plan import check_range, group_days
from tasks.pipeline.prepare import prepare_days
from tasks.sync.registry import adopt, excluded_of, load_registry, save_registry, shared

MAX_WORKERS = 16


@task(name="export-days", cache_policy=NO_CACHE, task_run_name="export {label}")
def export_days_task(
    client: MixpanelClient,
    lake: Lake,
    days: list[date],
    settings: ExportSettings,
    label: str,
    gate: threading.Semaphore,
    base: Manifest | None = None,
) -> list[DayResult]:
    """One export request: its days are committed together or left as they were."""
    with gate:
        if client.fatal is not None:  # the run already failed and said why: skip quietly
            return []
        results = export_days(client, lake, days, settings, base)
    logger = get_run_logger()
    for r in results:
        logger.info("%s", r.describe())
    return results


def resolve_range(
    credentials: MixpanelCredentials, from_date: date | None, to_date: date | None
) -> tuple[date, date]:
    """Defaults: yesterday in the project's calendar; a lone ``from_date`` runs up to yesterday."""
    calendar = credentials.calendar()
    yesterday = calendar.yesterday()
    start = from_date or to_date or yesterday
    end = to_date or max(yesterday, start)
    check_range(start, end, calendar.today())
    return start, end


def export_range(
    credentials: MixpanelCredentials,
    lake: Lake,
    days: list[date],
    settings: ExportSettings,
    days_per_request: int,
    max_concurrent_requests: int,
) -> list[dict[str, object]]:
    """Export ``days`` (gaps allowed) in requests of consecutive days, as tasks of the calling flow."""
    logger = get_run_logger()
    check_concurrency(max_concurrent_requests)
    refused = prepare_days(lake, days, settings)
    for why in refused.values():
        logger.error(why)
    days = [d for d in days if d not in refused]
    if not days:
        error = FilterMismatchError("; ".join(refused.values()) + ".")
        summarize([], {str(d): error for d in refused}, len(refused))
        raise error
    groups = group_days(days, days_per_request)
    settings = without_registered_ids(settings, credentials.project_id, lake)
    logger.info(
        "exporting %d day(s) %s..%s in %d request(s) to %s",
        len(days),
        days[0],
        days[-1],
        len(groups),
        lake.describe(str(credentials.project_id)),
    )
    progress = Progress(len(days), logger)
    with MixpanelClient(
        credentials.api_settings(), notify=progress.note, export_gate=lambda: export_slot(progress.note)
    ) as client:
        results, failures = run_groups(client, lake, groups, settings, max_concurrent_requests, progress)
    failures |= {str(d): FilterMismatchError(why + ".") for d, why in refused.items()}
    summarize(results, failures, len(days) + len(refused))
    if failures:
        # a fatal answer (bad credentials, no plan) stopped the run: that is the error to show
        first = client.fatal or next(iter(failures.values()))
        raise (
            first
            if len(failures) == len(groups) + len(refused)
            else PipelineError(
                f"{len(failures)} of {len(groups) + len(refused)} request(s) failed ({', '.join(failures)}); the other days were "
                f"committed. First error: {first}"
            )
        )
    return [r.as_row() for r in results]


def without_registered_ids(settings: ExportSettings, project_id: int, lake: Lake) -> ExportSettings:
    """Exports leave out the ids of the project's GDPR registry, so deleted users never return."""
    return dataclasses.replace(settings, excluded_ids=registered_ids(project_id, [lake]))


def registered_ids(project_id: int, lakes: list[Lake]) -> frozenset[str]:
    """Every id deleted under GDPR in the project (with their clusters): the project's registry
    united with each destination's own. A destination's registry receives the project's ids it
    lacks (its first export copies them all), and the project's receives the destinations' (ids a
    user dropped in an inbox), so both only grow. Ids are never logged, only counted."""
    # the ids to leave out cannot wait for later: an unreachable server is waited for, never skipped
    project = OUTAGE.required(lambda: load_project_registry(project_id))
    registries = [load_registry(lake) for lake in lakes]
    for lake, registry in zip(lakes, registries, strict=True):
        if adopt(registry, project):
            save_registry(lake, registry)
    union = shared(registries, project)
    OUTAGE.required(lambda: save_project_registry(project_id, union))
    excluded = excluded_of(union)
    get_run_logger().info("%d id(s) deleted under GDPR are left out of this export", len(excluded))
    return excluded


def settings_for(
    credentials: MixpanelCredentials,
    file_format: str,
    max_rejected_lines: int,
    event_names: list[str] | None,
    allow_shrink: bool = False,
    force: bool = False,
) -> ExportSettings:
    if max_rejected_lines < 0:
        raise BadRequestError(f"max_rejected_lines must be 0 or more (got {max_rejected_lines}).")
    run = run_ids()
    return ExportSettings(
        run_id=run.run_id,
        file_format=FileFormat(file_format),
        max_rejected_lines=max_rejected_lines,
        calendar=credentials.calendar(),
        flow_run_id=run.flow_run_id,
        events=tuple(event_names or ()),
        identity_mode=credentials.identity_mode,
        max_line_bytes=credentials.tuning.max_line_bytes,
        allow_shrink=allow_shrink,
        force=force,
    )


def run_groups(
    client: MixpanelClient,
    lake: Lake,
    groups: list[list[date]],
    settings: ExportSettings,
    max_concurrent: int,
    progress: Progress,
) -> tuple[list[DayResult], dict[str, Exception]]:
    gate = threading.Semaphore(max_concurrent)

    def submit(group: list[date]) -> PrefectFuture[list[DayResult]]:
        label = f"{group[0]}..{group[-1]}" if len(group) > 1 else str(group[0])
        return export_days_task.submit(client, lake, group, settings, label, gate)

    first = submit(groups[0])
    client.wait_for_first_answer(lambda: first.state.is_final())
    futures = [first] + [submit(g) for g in groups[1:]]
    labels = {f: f"{g[0]}..{g[-1]}" for f, g in zip(futures, groups, strict=True)}
    results: list[DayResult] = []
    failures: dict[str, Exception] = {}
    for future in as_completed(futures):
        try:
            done_days = future.result()
        except Exception as exc:
            failures[labels[future]] = exc
            continue
        if done_days:
            results.extend(done_days)
            progress.add(len(done_days))
        elif client.fatal is not None:  # skipped after a fatal answer to another request
            failures[labels[future]] = client.fatal
    return sorted(results, key=lambda r: r.day), failures


def summarize(results: list[DayResult], failures: dict[str, Exception], total_days: int) -> None:
    rows = [r.as_row() for r in results]
    rows += [{"day": label, "rows": None, "error": str(exc)} for label, exc in failures.items()]
    OUTAGE.required(
        lambda: create_table_artifact(
            key="mixpanel-events-summary",
            table=rows,
            description=f"{len(results)} of {total_days} day(s) committed",
        )
    )
