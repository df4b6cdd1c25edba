"""The upkeep flow: compact table-format files and drop versions older than each block's retention.

Hourly increments leave many small files in Delta and Iceberg tables; this flow rewrites them into
large ones (Delta ``optimize.compact``) and removes the versions older than the block's
``retention_hours`` with the files only they reached (Delta ``vacuum`` and log cleanup, Iceberg
snapshot expiry), and the files no version references (a writer that lost its commit race) once
older than the retention and an hour's grace (Delta's full ``vacuum``, Iceberg's orphan removal). Plain file destinations keep no old versions: for them it
only removes stale staging folders of crashed runs. It makes no Mixpanel request.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.destinations.catalog import AnyDestination
from blocks.mixpanel import MixpanelCredentials
from flows.runtime import pipeline_flow
from flows.targets import connect_all
from tasks.warehouses.tableformat import format_hook


@pipeline_flow(name="mixpanel-upkeep", log_prints=True)
def upkeep(
    credentials: MixpanelCredentials, destinations: list[AnyDestination] | None = None
) -> list[dict[str, object]]:
    """Compact small files and expire old versions of every Delta / Iceberg destination.

    Args:
        credentials: The Mixpanel project whose tables are kept (its project id names the folder).
        destinations: The destination blocks to keep: the blocks the deployment lists in prefect.yaml.
    """
    logger = get_run_logger()
    rows: list[dict[str, object]] = []
    for target in connect_all(credentials, destinations):
        stale = target.remove_stale_staging()
        where = target.describe(str(credentials.project_id))
        hook = format_hook(target)
        if hook is None:
            rows.append({"destination": where, "format": "files", "stale staging removed": stale})
            continue
        report = hook.table_format.upkeep()
        logger.info("%s (%s): %s", where, hook.table_format.name, report)
        for table, figures in report.items():
            row: dict[str, object] = {"destination": where, "format": hook.table_format.name, "table": table}
            rows.append(row | (figures if isinstance(figures, dict) else {"value": figures}))
    create_table_artifact(rows, key="mixpanel-upkeep", description="Files compacted and versions expired")
    return rows
