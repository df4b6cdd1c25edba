"""Being told when the pipelines need a person: four Prefect automations and the event one of them waits for.

``python -m flows.setup --notify BLOCK`` (``make deploy NOTIFY=BLOCK``) creates, each sending through the
notification block the user named (any of Prefect's: Slack, Teams, e-mail, a custom webhook):

* ``mixpanel-run-failed``: a run of a deployment of this project's flows (``mixpanel-*``) ends Failed;
* ``mixpanel-run-crashed``: such a run is Crashed and stays so for ``CRASH_CONFIRM``, a proactive
  trigger: a live run the server marked Crashed while it could not hear from it (a restarted server,
  ``flows.outage``) sets itself back to Running within seconds, and nobody is paged for it;
* ``mixpanel-freshness``: no ``events-daily`` run has Completed for ``FRESHNESS`` since the newest one
  (or since the automation was made), a proactive trigger: it fires on the absence of events, and again
  each ``FRESHNESS`` while it lasts;
* ``mixpanel-reconcile-unsynced``: the nightly reconcile emitted ``UNSYNCED_EVENT``, days it exported
  again that still do not match Mixpanel.

Invariants: creating them again replaces the automations of those names, never adds a second one. A
message is a template over names, a run's state, its dates and the event's days and reason only: never
a run's other parameters nor a block, so it cannot carry a credential; a state message is the run's
one-sentence error, which ``tasks.errors.redact`` has masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from tasks.errors import redact

FRESHNESS = timedelta(hours=26)
CRASH_CONFIRM = timedelta(seconds=60)
# any state a run can take after Crashed: the run revived itself, or a person ran it again
AFTER_CRASHED = {
    f"prefect.flow-run.{state}"
    for state in (
        "Running",
        "Completed",
        "Failed",
        "Cancelled",
        "Cancelling",
        "Scheduled",
        "Pending",
        "Paused",
    )
}
DAILY_FLOW, DAILY_DEPLOYMENT = "mixpanel-events", "events-daily"
UNSYNCED_EVENT = "mixpanel.reconcile.unsynced"
SUBJECT = "Mixpanel pipelines: {what}"

# the related resources of a flow run's state event: its flow (by name) and its deployment
OUR_DEPLOYMENTS = [
    ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": "mixpanel-*"}),
    ResourceSpecification({"prefect.resource.role": "deployment"}),
]
RUN_ENDED_BODY = (
    "{{ flow.name }}/{{ deployment.name }}: run {{ flow_run.name }} {{ flow_run.state.name }}"
    "{% if flow_run.parameters.from_date %} (days {{ flow_run.parameters.from_date }}.."
    "{{ flow_run.parameters.to_date or flow_run.parameters.from_date }}){% endif %}: "
    "{{ flow_run.state.message }}"
)
UNSYNCED_BODY = (
    "{{ flow.name or 'mixpanel-reconcile' }}/{{ deployment.name or 'reconcile' }}: "
    "{{ event.resource['mixpanel.days'] }} not in sync with Mixpanel: {{ event.resource['mixpanel.reason'] }}"
)


def automations(block_id: Any, freshness: timedelta = FRESHNESS) -> list[Automation]:
    """The four automations, sending through the notification block ``block_id``."""
    stale = (
        f"{DAILY_FLOW}/{DAILY_DEPLOYMENT}: no run has Completed for more than {_duration(freshness)}; "
        "the newest days may be missing from the destination."
    )

    def send(what: str, body: str) -> list[SendNotification]:
        return [SendNotification(block_document_id=block_id, subject=SUBJECT.format(what=what), body=body)]

    return [
        Automation(
            name="mixpanel-run-failed",
            description="A run of a Mixpanel pipeline deployment failed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed"},
                match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                match_related=OUR_DEPLOYMENTS,
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=send("{{ deployment.name }} {{ flow_run.state.name }}", RUN_ENDED_BODY),
        ),
        Automation(
            name="mixpanel-run-crashed",
            description=f"A run of a Mixpanel pipeline deployment crashed and stayed so for {_duration(CRASH_CONFIRM)}.",
            trigger=EventTrigger(
                after={"prefect.flow-run.Crashed"},
                expect=AFTER_CRASHED,
                match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                match_related=OUR_DEPLOYMENTS,
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=CRASH_CONFIRM,
            ),
            actions=send("{{ deployment.name }} {{ flow_run.state.name }}", RUN_ENDED_BODY),
        ),
        Automation(
            name="mixpanel-freshness",
            description=stale,
            trigger=EventTrigger(
                # a Completed run both ends a window and starts the next: the period counts from the
                # newest one (from the automation's creation until there is one), not in fixed windows
                after={"prefect.flow-run.Completed"},
                expect={"prefect.flow-run.Completed"},
                match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                match_related=[
                    ResourceSpecification(
                        {"prefect.resource.role": "flow", "prefect.resource.name": DAILY_FLOW}
                    ),
                    ResourceSpecification(
                        {"prefect.resource.role": "deployment", "prefect.resource.name": DAILY_DEPLOYMENT}
                    ),
                ],
                posture=Posture.Proactive,
                threshold=1,
                within=freshness,
            ),
            actions=send(f"{DAILY_DEPLOYMENT} is behind", stale),
        ),
        Automation(
            name="mixpanel-reconcile-unsynced",
            description="The nightly reconcile found days it could not bring back in sync with Mixpanel.",
            trigger=EventTrigger(
                expect={UNSYNCED_EVENT},
                match=ResourceSpecification({"prefect.resource.id": f"{UNSYNCED_EVENT}.*"}),
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=send("days not in sync", UNSYNCED_BODY),
        ),
    ]


def ensure_alerts(block: str, freshness: timedelta = FRESHNESS) -> list[str]:
    """Create (or replace) the automations, sending through the notification block named ``block``."""
    block_id = notification_block_id(block)
    wanted = automations(block_id, freshness)
    with get_client(sync_client=True) as client:
        for automation in wanted:
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
    for automation in wanted:
        automation.create()
    return [automation.name for automation in wanted]


def notification_block_id(block: str) -> Any:
    """The id of the notification block named ``block`` (``name``, or ``type-slug/name`` if names repeat)."""
    slug, _, name = block.rpartition("/")
    found = [doc for doc in _block_documents() if _notifier_named(doc, name, slug)]
    if len(found) != 1:
        why = "several notification blocks are" if found else "no notification block is"
        raise SystemExit(
            f"NOTIFY={block}: {why} named so; create one (docs/alerts.md) or write <block-type-slug>/<name>."
        )
    return found[0].id


def announce_unsynced(days: Sequence[str], reason: str) -> None:
    """Emit ``UNSYNCED_EVENT`` for ``days`` with the one-sentence ``reason`` (masked), from a flow run."""
    said = redact(reason)
    emit_event(
        event=UNSYNCED_EVENT,
        resource={
            "prefect.resource.id": f"{UNSYNCED_EVENT}.{days[0]}..{days[-1]}",
            "mixpanel.days": ", ".join(days),
            "mixpanel.reason": said,
        },
        payload={"days": list(days), "reason": said},
    )


def _block_documents(page: int = 200) -> list[Any]:
    """Every block document, without its secrets (the server answers at most ``page`` at a time)."""
    found: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:
            batch = client.read_block_documents(offset=len(found), limit=page, include_secrets=False)
            found += batch
            if len(batch) < page:
                return found


def _notifier_named(document: Any, name: str, slug: str) -> bool:
    type_slug = document.block_type.slug if document.block_type else None
    capabilities = document.block_schema.capabilities if document.block_schema else []
    return bool(document.name == name and slug in ("", type_slug) and "notify" in capabilities)


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}{'s' if seconds > size else ''}"
    return f"{seconds} seconds"
