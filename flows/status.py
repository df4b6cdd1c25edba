"""The status flow: is the destination in sync with Mixpanel, day by day (tasks/sync/status.py decides).

It asks Mixpanel's per-day counts once (recorded with each day), then publishes the rows three ways: a
table artifact, a markdown artifact with a chart a person reads at a glance (tasks/sync/chart.py), and,
in a warehouse, the ``mp_sync_status`` view (the warehouse's loader replaces its rows). The nightly
reconcile runs it at its end; ``make status`` (flows/status_terminal.py) shows the same rows in a terminal.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.destinations.catalog import AnyDestination
from blocks.mixpanel import MixpanelCredentials
from flows.params import AtLeastOne
from flows.runtime import pipeline_flow
from flows.targets import connect
from tasks.lake.commit import Lake
from tasks.mixpanel.client import MixpanelClient, mixpanel_counts
from tasks.sync.chart import status_markdown
from tasks.sync.status import DEFAULT_DAYS, HEALTHY, Status, build_status

# the status is advisory: a count query Mixpanel keeps refusing is reported, not waited out for long
STATUS_ATTEMPTS = 3


def sync_status(
    credentials: MixpanelCredentials,
    lake: Lake,
    days: int = DEFAULT_DAYS,
    verify: bool = False,
    online: bool = True,
    attempts: int = STATUS_ATTEMPTS,
) -> Status:
    """The status of ``target``; with ``online``, Mixpanel's counts are asked first (and recorded)."""
    calendar = credentials.calendar()
    uncomparable = calendar.uncomparable()
    if not online or uncomparable is not None:
        return build_status(lake, calendar.yesterday(), days, None, verify, uncomparable=uncomparable)
    settings = credentials.api_settings()
    tuning = replace(settings.tuning, max_attempts=min(settings.tuning.max_attempts, attempts))
    settings = replace(settings, tuning=tuning)
    with MixpanelClient(settings) as client:

        def ask(wanted: list[date], names: set[str]) -> dict[date, dict[str, int]]:
            return {d: dict(c) for d, c in mixpanel_counts(client, wanted, names).items()}

        return build_status(lake, calendar.yesterday(), days, ask, verify)


def artifact_key(lake: Lake) -> str:
    """One key per destination and project (the UI keeps each key's history): lowercase, digits, dashes."""
    where = lake.describe(lake.project_prefix)
    return f"mixpanel-status-{lake.project_prefix}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


@pipeline_flow(name="mixpanel-status", log_prints=True)
def status(
    credentials: MixpanelCredentials,
    destination: AnyDestination | None = None,
    days: AtLeastOne = DEFAULT_DAYS,
    verify: bool = False,
) -> list[dict[str, object]]:
    """Show, per day of the last `days`, whether the destination holds what Mixpanel counts.

    Args:
        credentials: The Mixpanel project (a MixpanelCredentials block): its per-day counts are asked once.
        destination: The destination to check (default: the local folder `data`).
        days: How many days back from yesterday to show (from the destination's first committed day on).
        verify: Also re-read every committed file of those days and check its rows and fingerprint against
            the manifest (reads every file: slower).
    """
    logger = get_run_logger()
    lake = connect(credentials, destination)
    where = lake.describe(lake.project_prefix)
    result = sync_status(credentials, lake, days, verify)
    for note in result.notes:
        logger.warning(note)
    key = artifact_key(lake)
    healthy = sum(r["state"] in HEALTHY for r in result.rows)
    summary = (
        f"{where}: {healthy} of {len(result.rows)} day(s) in sync; {result.freshness(datetime.now(tz=UTC))}"
    )
    create_table_artifact(key=key, table=[_cells(r) for r in result.rows], description=summary)
    create_markdown_artifact(key=f"{key}-chart", markdown=status_markdown(result, where), description=summary)
    published = lake.publish_status(result.table())
    logger.info("%s%s", summary, " (published to the warehouse's mp_sync_status)" if published else "")
    for row in result.rows:
        if row["state"] not in HEALTHY:
            logger.warning("%s %s: %s", row["day"], row["state"], row["reason"])
    return result.rows


def _cells(row: dict[str, object]) -> dict[str, object]:
    """A table artifact's row: plain text and numbers (days and instants as ISO text)."""
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in row.items()}
