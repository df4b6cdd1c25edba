"""`python -m flows.setup`: what `make deploy` needs on the Prefect server besides `prefect deploy`.

Before `prefect deploy`, in one process (each `prefect` command imports every installed integration,
seconds of CPU apiece): creates the process work pool the deployments name (if absent), registers every
block type of the project, creates the global concurrency limits that hold Mixpanel's rate budget across
workers, the automations that mark runs whose heartbeat stopped as Crashed, with ``--notify BLOCK`` the
automations that send failures, staleness and unsynced days through that notification block
(``flows.alerts``) and, with ``--sandbox URL``,
saves a MixpanelCredentials block named ``mixpanel`` pointing at a sandbox, the sandbox's
MixpanelGdprCredentials named ``mixpanel-gdpr`` and a LocalDestination named ``local`` (only where no block
of that name exists), so a first run needs no Mixpanel account.

After it, ``--pin-blocks`` rewrites the deployments' block references from names to ids: the UI's block
pickers only show a reference by id, and would otherwise show an empty field for a block that is set. It
also drops ``"default": null`` from the optional dates' schema (``flows.params``), so that a date picker
left empty in the UI is accepted and means the documented default, and creates the automation that runs
the crash-report deployment (``flows.crash``) for every crashed run, which needs that deployment.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound

from blocks.destinations.catalog import BLOCK_TYPES
from blocks.destinations.local import LocalDestination
from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials
from flows.alerts import FRESHNESS, ensure_alerts
from flows.crash import CRASH_REPORT_FLOW, RUN_RESOURCE
from flows.limits import ensure_limits
from flows.params import optional_dates_without_default


def ensure_work_pool(name: str) -> str:
    """Create the process work pool ``name`` unless a pool of that name exists (never changes one)."""
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            return f"{name} (process, created)"
    return f"{name} ({pool.type}, exists: left as it is)"


def register_block_types() -> list[str]:
    """Every block type of the project (and the blocks they nest), shown in the UI with their forms."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


def save_sandbox_blocks(url: str, data_dir: Path) -> list[str]:
    """Save the blocks the deployments name, unless blocks of those names exist: never overwrites."""
    # the sandbox comes with a checkout (`make deploy`), not with the installed package: imported only here
    from sandbox.config import ProjectConfig

    cfg = ProjectConfig()
    saved = []
    if not _exists(MixpanelCredentials, "mixpanel"):
        MixpanelCredentials(
            project_id=cfg.project_id,
            service_account_username=cfg.username,
            service_account_secret=cfg.secret,
            api_base_url=url,
        ).save("mixpanel")
        saved.append(f"mixpanel-credentials/mixpanel (the sandbox at {url})")
    if not _exists(MixpanelGdprCredentials, "mixpanel-gdpr"):
        MixpanelGdprCredentials(project_token=cfg.project_token, oauth_token=cfg.gdpr_oauth_token).save(
            "mixpanel-gdpr"
        )
        saved.append("mixpanel-gdpr-credentials/mixpanel-gdpr (the sandbox's tokens)")
    if not _exists(LocalDestination, "local"):
        # made here, once: the saved block refuses a missing folder (an unmounted volume) from then on
        data_dir.mkdir(parents=True, exist_ok=True)
        LocalDestination(path=str(data_dir.resolve())).save("local")
        saved.append(f"mixpanel-local-destination/local ({data_dir.resolve()})")
    return saved


# prefect.yaml sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 for every run: three heartbeats missed is a run
# whose process is gone (a killed worker, a lost machine), which Prefect would otherwise show as Running.
# A run only sends heartbeats once Running: one whose process died while Pending (starting) is caught by
# the second automation, since starting never takes minutes.
CRASH_AUTOMATIONS = {
    "mixpanel-crashed-runs": (
        "prefect.flow-run.heartbeat",
        timedelta(seconds=90),
        "No heartbeat for 90 s: the flow run's process or its worker is gone. Run it again.",
    ),
    "mixpanel-stuck-pending-runs": (
        "prefect.flow-run.Pending",
        timedelta(seconds=180),
        "Pending for 3 minutes without starting: the flow run's process or its worker is gone. Run it again.",
    ),
}
CRASH_REPORT_AUTOMATION = "mixpanel-crash-report"
ENDED = {
    "prefect.flow-run.Running",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
}


NO_ALERTS = (
    "alerts: none: `make deploy NOTIFY=<block name>` sends failures, staleness and unsynced days "
    "to a Slack, Teams, e-mail or webhook block (docs/alerts.md)."
)


def ensure_crash_automations() -> list[str]:
    """Create (or replace) the automations that mark a flow run Crashed when its process is gone."""
    with get_client(sync_client=True) as client:
        for name in CRASH_AUTOMATIONS:
            for existing in client.read_automations_by_name(name):
                client.delete_automation(existing.id)
    for name, (after, within, message) in CRASH_AUTOMATIONS.items():
        Automation(
            name=name,
            description=message,
            trigger=EventTrigger(
                after={after},
                expect=ENDED | {"prefect.flow-run.heartbeat"},
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=within,
            ),
            actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)],
        ).create()
    return list(CRASH_AUTOMATIONS)


def ensure_crash_report_automation() -> str:
    """After `prefect deploy`: the automation that runs the crash-report deployment (``flows.crash``)
    for every crashed run of the project's flows (named ``mixpanel-…``; not the report's own)."""
    with get_client(sync_client=True) as client:
        report = client.read_deployment_by_name(f"{CRASH_REPORT_FLOW}/{CRASH_REPORT_FLOW}")
        for existing in client.read_automations_by_name(CRASH_REPORT_AUTOMATION):
            client.delete_automation(existing.id)
    Automation(
        name=CRASH_REPORT_AUTOMATION,
        description="Writes why a flow run crashed in its own log and ends its task runs left open.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": f"{RUN_RESOURCE}*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": "mixpanel-*"}
            ),
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=report.id,
                parameters={"flow_run_id": "{{ event.resource.id }}"},
            )
        ],
    ).create()
    return CRASH_REPORT_AUTOMATION


def pin_block_references() -> list[str]:
    """Rewrite every deployment's ``{"$ref": {"block_document_slug": ...}}`` as a reference by id."""
    pinned = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        for deployment in client.read_deployments():
            parameters = _by_id(client, deployment.parameters)
            schema = deployment.parameter_openapi_schema
            fixed = optional_dates_without_default(schema) if schema else schema
            if parameters != deployment.parameters or fixed != schema:
                client.update_deployment(
                    deployment.id, DeploymentUpdate(parameters=parameters, parameter_openapi_schema=fixed)
                )
                pinned.append(f"{flows.get(deployment.flow_id, '?')}/{deployment.name}")
    return pinned


def _by_id(client: Any, value: Any) -> Any:
    if isinstance(value, list):
        return [_by_id(client, item) for item in value]
    if not isinstance(value, dict):
        return value
    slug = value.get("$ref", {}).get("block_document_slug") if isinstance(value.get("$ref"), dict) else None
    if slug is None:
        return {key: _by_id(client, item) for key, item in value.items()}
    block_type, _, name = slug.partition("/")
    try:
        document = client.read_block_document_by_name(name, block_type)
    except ObjectNotFound:
        raise SystemExit(
            f"The deployments name the block {slug}, which does not exist: create it, then run `make deploy` again."
        ) from None
    return {"$ref": {"block_document_id": str(document.id)}}


def _exists(block_type: type[Block], name: str) -> bool:
    try:
        block_type.load(name)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="mixpanel", help="the process work pool to create if absent")
    parser.add_argument("--sandbox", metavar="URL", help="save sandbox credentials and a local destination")
    parser.add_argument("--data", type=Path, default=Path("data"), help="folder of the local destination")
    parser.add_argument("--notify", metavar="BLOCK", help="the notification block alerts are sent through")
    parser.add_argument(
        "--freshness-hours",
        type=float,
        default=FRESHNESS / timedelta(hours=1),
        help="alert when no events-daily run has Completed for this long",
    )
    parser.add_argument(
        "--pin-blocks",
        action="store_true",
        help="after `prefect deploy`: refer to blocks by id, and report crashed runs",
    )
    args = parser.parse_args(argv)
    if args.pin_blocks:
        pinned = pin_block_references()
        print("block references pinned by id in:", ", ".join(pinned) if pinned else "no deployment")
        print("automations:", ensure_crash_report_automation())
        return
    print("work pool:", ensure_work_pool(args.pool))
    print("block types:", ", ".join(register_block_types()))
    print("global concurrency limits:", ", ".join(ensure_limits()))
    print("automations:", ", ".join(ensure_crash_automations()))
    if args.notify:
        print("alerts:", ", ".join(ensure_alerts(args.notify, timedelta(hours=args.freshness_hours))))
    else:
        print(NO_ALERTS)
    if args.sandbox:
        saved = save_sandbox_blocks(args.sandbox, args.data)
        print("saved blocks:", ", ".join(saved) if saved else "none (they exist already)")


if __name__ == "__main__":
    main()
