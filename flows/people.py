"""The people flow: every Mixpanel user profile into ``mp_people_data``, replaced whole each run."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from blocks.destinations.catalog import AnyDestination
from blocks.mixpanel import MixpanelCredentials
from flows.exporting import registered_ids
from flows.params import AtLeastOne
from flows.runtime import pipeline_flow, synchronous
from flows.targets import connect, run_ids
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.people import EngageQuery, export_people


@pipeline_flow(name="mixpanel-people", log_prints=True)
def people(
    credentials: MixpanelCredentials,
    destination: AnyDestination | None = None,
    page_size: AtLeastOne = 1000,
    where: str | None = None,
    output_properties: list[str] | None = None,
    max_concurrent_pages: AtLeastOne = 5,
) -> dict[str, object]:
    """Export every user profile (Engage API) into mp_people_data, swapped in atomically.

    Args:
        credentials: The Mixpanel project (a MixpanelCredentials block).
        destination: Where the tables go: the destination block the deployment names (after `make deploy`:
            `local`, on ./data); pick another block to write elsewhere.
        page_size: Profiles per Engage page (Mixpanel's usual maximum is 1000).
        where: Optional Engage selector, e.g. properties["$city"] == "Zürich".
        output_properties: Export only these profile properties; empty exports all.
        max_concurrent_pages: Pages fetched at once after the first (the query API allows 5).
    """
    logger = get_run_logger()
    lake = connect(credentials, destination)
    excluded = registered_ids(credentials.project_id, [lake])
    query = EngageQuery(page_size=page_size, where=where, output_properties=tuple(output_properties or ()))
    progress = synchronous(create_progress_artifact(0.0, description="Engage pages fetched"))

    def report(done: int, total: int | None) -> None:
        if total:
            update_progress_artifact(progress, min(100.0, 100.0 * done / total))

    with MixpanelClient(credentials.api_settings(), notify=logger.warning) as client:
        result = export_people(
            client,
            lake,
            query,
            max_concurrent_pages=max_concurrent_pages,
            run=run_ids(),
            progress=report,
            excluded_ids=excluded,
        )
    update_progress_artifact(progress, 100.0)
    summary: dict[str, object] = {
        "profiles": result.rows,
        "pages": result.pages,
        "files": result.files,
        "bytes": result.bytes,
    }
    logger.info("mp_people_data replaced: %s", summary)
    create_table_artifact(key="mixpanel-people-summary", table=[summary], description="People export")
    return summary
