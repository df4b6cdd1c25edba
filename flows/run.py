"""`python -m flows.run DEPLOYMENT [name=value ...]` (`make run`): run a deployment from a terminal and read it.

`prefect deployment run --watch` prints Prefect's event stream (limits acquired and released, artifact
ids) and, when the run fails, not why. This starts the run through the Prefect client, prints the run's
own log lines while it runs (and those of the child runs a backfill fans out to: the rows of each day,
the waits on the rate budget), leaves out Prefect's engine and worker lines, and ends with the run's
state: exit 0 when Completed, else 1 with the run's one-sentence message. A parameter the deployment
refuses is said in one sentence too, and no run is created.

Parameters are ``name=value``: an empty value leaves the parameter out (its default applies), a JSON
value (``7``, ``true``, ``["a", "b"]``) is taken as JSON, and for a list parameter ``a,b`` is a list.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from flows.params import DATE_PATTERN, malformed_date

POLL_SECONDS = 1.0
LOG_PAGE = 200  # the server's largest page
# Prefect's own lines in a flow run's log (engine and worker), which say nothing about the data
PREFECT_LOGGERS = (
    "prefect.flow_runs.worker",
    "prefect.flow_runs.runner",
    "prefect.workers",
    "prefect.runner",
)
PREFECT_LINES = re.compile(
    r"^(Beginning (flow|subflow) run|Finished in state|Created (task|subflow) run|Executing '|"
    r"Downloading flow code|Opening process|Process for flow run|Running on worker|View at |"
    r"Worker '|Completed submission|Submitting flow run|Engine execution|Running \d+ deployment pull step|"
    r"Executing deployment step|Deployment step '|All deployment steps)"
)
ENGINE_PREFIX = re.compile(r"^(Flow run encountered an exception|Task run encountered an exception): ")


class RefusedError(Exception):
    """A parameter or deployment the run cannot start with: one sentence, no run created."""


def parse_params(pairs: list[str], schema: dict[str, Any], deployment: str) -> dict[str, Any]:
    properties: dict[str, Any] = schema.get("properties", {})
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise RefusedError(f"{pair!r} is not name=value, e.g. from_date=2026-11-01.")
        if name not in properties:
            raise RefusedError(
                f"{deployment} has no parameter {name!r}; its parameters are {', '.join(properties)}."
            )
        if text == "":
            continue  # left empty: the flow's default, as an empty field of the UI's form
        prop = properties[name]
        if prop.get("pattern") == DATE_PATTERN:
            if not re.fullmatch(DATE_PATTERN, text):
                raise RefusedError(malformed_date(name, text))
            params[name] = text
            continue
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        if _is_list(prop) and not isinstance(value, list):
            value = [item.strip() for item in text.split(",") if item.strip()]
        params[name] = value
    return params


def _is_list(prop: dict[str, Any]) -> bool:
    branches = [prop, *prop.get("anyOf", [])]
    return any(branch.get("type") == "array" for branch in branches)


def is_ours(name: str, message: str) -> bool:
    return not name.startswith(PREFECT_LOGGERS) and not PREFECT_LINES.match(message)


def one_sentence(message: str | None) -> str:
    return ENGINE_PREFIX.sub("", (message or "").strip()) or "the run ended without a message"


def start(client: SyncPrefectClient, deployment: str, pairs: list[str]) -> Any:
    try:
        found = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        raise RefusedError(
            f"There is no deployment {deployment!r} on {client.api_url}: `make deploy` creates them "
            "(names like mixpanel-backfill/backfill)."
        ) from None
    params = parse_params(pairs, found.parameter_openapi_schema or {}, deployment)
    try:
        return client.create_flow_run_from_deployment(found.id, parameters=params)
    except PrefectHTTPStatusError as exc:
        detail = exc.response.json().get("detail", str(exc)) if exc.response.content else str(exc)
        raise RefusedError(f"The server refused the run: {detail}") from None


def follow(client: SyncPrefectClient, run_id: UUID, out: Any = sys.stdout) -> Any:
    """Print the run's and its children's own log lines until it ends; return its last state."""
    seen: set[UUID] = set()
    names: dict[UUID, str] = {}
    quiet_after_end = 0
    while True:
        run = client.read_flow_run(run_id)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )
        names.update({child.id: child.name for child in children})
        ids = [run_id, *names]
        new = [log for log in _logs(client, ids) if log.id not in seen]
        for log in new:
            seen.add(log.id)
            if log.flow_run_id is None or not is_ours(log.name, log.message):
                continue
            where = f"[{names[log.flow_run_id]}] " if log.flow_run_id in names else ""
            print(f"{_clock(log.timestamp)} {where}{log.message}", file=out, flush=True)
        final = run.state is not None and run.state.is_final()
        if final and not _running(client, list(names)):
            # the last lines reach the server a moment after the state does (batched by each run)
            quiet_after_end = 0 if new else quiet_after_end + 1
            if quiet_after_end >= 3:
                return run.state
        time.sleep(POLL_SECONDS)


def _logs(client: SyncPrefectClient, ids: list[UUID]) -> list[Any]:
    only = LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
    logs: list[Any] = []
    while True:
        page = client.read_logs(log_filter=only, limit=LOG_PAGE, offset=len(logs), sort=LogSort.TIMESTAMP_ASC)
        logs += page
        if len(page) < LOG_PAGE:
            return logs


def _running(client: SyncPrefectClient, ids: list[UUID]) -> bool:
    if not ids:
        return False
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return any(r.state is None or not r.state.is_final() for r in runs)


def _clock(timestamp: datetime) -> str:
    return timestamp.astimezone().strftime("%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", nargs="?", help="flow/deployment, e.g. mixpanel-backfill/backfill")
    parser.add_argument("params", nargs="*", help="name=value, e.g. from_date=2026-11-01")
    args = parser.parse_args(argv)
    if not args.deployment:
        print(
            "Name the deployment to run, e.g. make run DEPLOYMENT=mixpanel-backfill/backfill "
            "PARAMS='from_date=2026-11-01'.",
            file=sys.stderr,
        )
        return 2
    with get_client(sync_client=True) as client:
        try:
            run = start(client, args.deployment, args.params)
        except RefusedError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.deployment}: flow run {run.name} ({run.id})", flush=True)
        state = follow(client, run.id)
    if state.is_completed():
        print(f"{args.deployment}: {run.name} Completed", flush=True)
        return 0
    print(f"{args.deployment}: {run.name} {state.name}: {one_sentence(state.message)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
