"""The identity flow: ``mp_identity_mappings_data`` from the merge edges of every committed day.

Mixpanel has no API for its identity clusters; the events flow records each day's ID-merge edges
beside the day (replaced with it), and this flow unions them all and swaps the table whole. It
makes no Mixpanel request.
"""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.destinations.catalog import AnyDestination
from blocks.mixpanel import MixpanelCredentials
from flows.exporting import registered_ids
from flows.runtime import pipeline_flow
from flows.targets import connect, run_ids
from tasks.lake.tables import committed_edges, replace_table
from tasks.pipeline.exclude import id_rows_of
from tasks.pipeline.identity import refused_identifies, resolve
from tasks.schema import MAPPINGS_SCHEMA, MAPPINGS_TABLE, empty_mappings


@pipeline_flow(name="mixpanel-identity", log_prints=True)
def identity(
    credentials: MixpanelCredentials, destination: AnyDestination | None = None
) -> dict[str, object]:
    """Rebuild mp_identity_mappings_data (distinct_id -> resolved_distinct_id) from the committed days.

    Args:
        credentials: The Mixpanel project (its identity_mode picks the merge rules); no request is made.
        destination: Where the tables are: the destination block the deployment names (after `make deploy`:
            `local`, on ./data).
    """
    logger = get_run_logger()
    lake = connect(credentials, destination)
    edges, days = committed_edges(lake)
    mappings = resolve(edges, credentials.identity_mode) if edges.height else _empty()
    # edges a purge has not reached yet (or a destination added since) still name deleted users
    excluded = registered_ids(credentials.project_id, [lake])
    mappings = mappings.filter(~id_rows_of(excluded, ("distinct_id", "resolved_distinct_id")))
    run = run_ids()
    manifest = replace_table(
        lake,
        MAPPINGS_TABLE,
        MAPPINGS_SCHEMA,
        [mappings],
        run_id=run.run_id,
        value_column="resolved_distinct_id",
        flow_run_id=run.flow_run_id,
    )
    clusters = mappings["resolved_distinct_id"].n_unique() if mappings.height else 0
    summary: dict[str, object] = {
        "days": days,
        "edges": edges.height,
        "mapped ids": manifest.rows,
        "clusters": clusters,
        "mode": credentials.identity_mode,
    }
    if credentials.identity_mode == "original" and edges.height:
        # Mixpanel refuses an $identify whose $anon_id is not a UUID v4 (errAnonDistinctIdNonGUIDForm)
        summary["identifies refused (anon id not UUID v4)"] = edges.filter(refused_identifies()).height
    logger.info("identity mappings: %s", summary)
    create_table_artifact(
        key="mixpanel-identity-summary", table=[summary], description="Identity mappings rebuilt"
    )
    return summary


def _empty() -> pl.DataFrame:
    return empty_mappings()
