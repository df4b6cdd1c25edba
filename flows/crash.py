"""The crash report: what a crashed flow run cannot say itself.

A run whose process died (killed, out of memory, its machine lost) is marked Crashed by the server (the
heartbeat automations of ``flows.setup``) and says nothing more: its log stops mid-run and its task runs
stay Running for ever. The automation ``mixpanel-crash-report`` (made by `make deploy`) runs this flow
for every crashed run of the project's flows: it writes the reason in the crashed run's own log, in one
line, and ends its task runs still open as Crashed. It changes nothing of a run that is not Crashed, and
its own runs are not reported (a report that crashed is not reported again).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES, StateType
from prefect.states import Crashed

from flows.runtime import pipeline_flow
from tasks.errors import BadRequestError, redact

RUN_RESOURCE = "prefect.flow-run."
CRASH_REPORT_FLOW = "crash-report"  # not `mixpanel-…`: the automation reports those flows' runs only


@pipeline_flow(name=CRASH_REPORT_FLOW, log_prints=True)
def crash_report(flow_run_id: str) -> str:
    """Say in a crashed flow run's log why it crashed, and end its task runs still open.

    Args:
        flow_run_id: The crashed flow run: its id, as the UI shows it (or its event resource,
            ``prefect.flow-run.<id>``, which the automation passes).
    """
    run_id = _run_id(flow_run_id)
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        if run.state is None or run.state.type != StateType.CRASHED:
            state = run.state.type.value if run.state else "no state"
            logger.info("flow run %s is %s, not Crashed: nothing to report", run.name, state)
            return state
        reason = redact(run.state.message or "its process stopped without saying why.")
        open_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(not_any_=list(TERMINAL_STATES)))
            ),
        )
        for task_run in open_runs:
            client.set_task_run_state(
                task_run.id, Crashed(message=f"its flow run crashed: {reason}"), force=True
            )
        line = (
            f"This run crashed: {reason} Its {len(open_runs)} task run(s) still open were ended as Crashed; "
            "the days it committed are kept and the others are as they were: run it again to finish them."
        )
        client.create_logs(
            [
                LogCreate(
                    name="prefect.flow_runs",
                    level=logging.ERROR,
                    message=line,
                    timestamp=datetime.now(UTC),
                    flow_run_id=run_id,
                )
            ]
        )
    logger.info("reported in the log of flow run %s: %s", run.name, line)
    return line


def _run_id(value: str) -> UUID:
    try:
        return UUID(value.strip().removeprefix(RUN_RESOURCE))
    except (ValueError, AttributeError):
        raise BadRequestError(
            f"flow_run_id must be a flow run's id, such as 0f5c2f8e-1b7e-4c3a-9d1e-2a6b8c4d5e6f (got {value!r})."
        ) from None
