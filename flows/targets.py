"""What a flow run writes to and how it signs what it commits.

A flow takes destination blocks as parameters; left empty, it writes to the local folder (the
`LocalDestination` default, ./data). Each block is connected once per run to the project's tables;
the ids a run records in its manifests come from `run_ids`, in a flow run or outside one.
"""

from __future__ import annotations

from prefect.runtime import flow_run

from blocks.destinations.catalog import AnyDestination
from blocks.destinations.local import LocalDestination
from blocks.mixpanel import MixpanelCredentials
from tasks.lake.commit import Lake
from tasks.lake.runs import RunIds


def blocks_of(destinations: list[AnyDestination] | None) -> list[AnyDestination]:
    """The destination blocks given, or the local folder when none is."""
    return destinations or [LocalDestination()]


def connect(credentials: MixpanelCredentials, destination: AnyDestination | None) -> Lake:
    """The project's tables in ``destination`` (default: the local folder)."""
    return (destination or LocalDestination()).connect(credentials.project_id)


def connect_all(credentials: MixpanelCredentials, destinations: list[AnyDestination] | None) -> list[Lake]:
    return [connect(credentials, block) for block in blocks_of(destinations)]


def run_ids() -> RunIds:
    """A new run id, with the id of the Prefect flow run this is (None outside one)."""
    return RunIds(flow_run_id=str(flow_run.id) if flow_run.id else None)
