"""The GDPR flow: ask Mixpanel to delete users, and purge them from every destination.

One run: register new ids (the ``distinct_ids`` parameter, submitted to Mixpanel; ids in files of
each destination's ``_state/gdpr/inbox/``, supplied by the user and purged here only), submit the
unsubmitted ones to Mixpanel's GDPR API, poll the tasks not finished yet, then expand every id not
purged yet to its whole identity cluster and remove the cluster's rows from every table of every
destination. Each destination gets an audit record of the purge, with ids only as SHA-256.
Scheduled daily, a run with no new ids polls and finishes any purge a crash interrupted.

The ids belong to the project, not to the destinations listed: the run starts from the project's
registry (a ``MixpanelGdprRegistry`` block, ``blocks.gdpr``), so every destination is purged of
every id ever registered, and writes the ids it registers (and their clusters, once expanded) back
to it before any purge, so every later export of the project, into any destination, leaves them out.
"""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.destinations.catalog import AnyDestination
from blocks.gdpr import MixpanelGdprCredentials, save_project_registry
from blocks.mixpanel import MixpanelCredentials
from flows.exporting import registered_ids
from flows.runtime import pipeline_flow
from flows.targets import connect_all, run_ids
from tasks.errors import BadRequestError, PipelineError
from tasks.mixpanel.gdpr_api import GdprClient
from tasks.sync.gdpr import poll, purge, register, submit
from tasks.sync.registry import shared


@pipeline_flow(name="mixpanel-gdpr", log_prints=True)
def gdpr(
    credentials: MixpanelCredentials,
    destinations: list[AnyDestination] | None = None,
    gdpr_credentials: MixpanelGdprCredentials | None = None,
    distinct_ids: list[str] | None = None,
    submit_to_mixpanel: bool = True,
    compliance_type: Literal["GDPR", "CCPA"] = "GDPR",
) -> dict[str, object]:
    """Delete users: Mixpanel's GDPR API, then every row of their identity clusters everywhere.

    Args:
        credentials: The Mixpanel project (a MixpanelCredentials block).
        destinations: Every destination to purge: the blocks the deployment lists in prefect.yaml; add
            or remove blocks here for this run.
        gdpr_credentials: Project token and GDPR OAuth token (needed to submit and poll deletions).
        distinct_ids: Users to delete. Ids may also be dropped, one per line, in files under
            <project_id>/_state/gdpr/inbox/ of a destination: those are purged here only.
        submit_to_mixpanel: Submit distinct_ids to Mixpanel's GDPR API (off: purge here only).
        compliance_type: GDPR or CCPA, as Mixpanel records the request.
    """
    logger = get_run_logger()
    ids = [i for i in (distinct_ids or []) if i.strip()]
    if ids and submit_to_mixpanel and gdpr_credentials is None:
        raise BadRequestError(
            "distinct_ids are to be submitted to Mixpanel but no gdpr_credentials block was given: pass one, "
            "or set submit_to_mixpanel to false to purge them from the destinations only."
        )
    lakes = connect_all(credentials, destinations)
    registered_ids(credentials.project_id, lakes)  # the project's ids reach every destination listed
    registries = register(lakes, ids, "mixpanel" if submit_to_mixpanel else "user", compliance_type)
    save_project_registry(credentials.project_id, shared(registries, {}))
    mixpanel_error: PipelineError | None = None
    if gdpr_credentials is not None:
        try:
            with GdprClient(
                credentials.api_settings(), gdpr_credentials.settings(), notify=logger.warning
            ) as client:
                submit(client, lakes, registries, logger.info)
                poll(client, lakes, registries)
        except PipelineError as exc:  # the purge here does not wait for Mixpanel
            mixpanel_error = exc
    run = run_ids()
    rows = [
        purge(lake, registry, credentials.identity_mode, run, logger.info)
        for lake, registry in zip(lakes, registries, strict=True)
    ]
    save_project_registry(credentials.project_id, shared(registries, {}))  # the clusters found
    create_table_artifact(key="mixpanel-gdpr-summary", table=rows, description="GDPR deletions")
    if mixpanel_error is not None:
        raise type(mixpanel_error)(
            f"{mixpanel_error} The destinations were purged; the ids not yet sent stay registered and the next "
            "run sends them."
        )
    return {"destinations": rows}
