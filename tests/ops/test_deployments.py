"""prefect.yaml on a real Prefect server with process workers: deploy, run, refuse, fan out."""

from __future__ import annotations

import json
import re
import time
from datetime import date, timedelta
from uuid import UUID

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from blocks.destinations.catalog import BLOCK_TYPES
from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.local import LocalDestination
from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials
from flows.runtime import synchronous
from tests.conftest import assert_day_matches_sandbox, local_destination, recent_days
from tests.kit.cluster import Cluster

DEPLOYMENTS = {
    "mixpanel-events/events-daily",
    "mixpanel-events-hourly/events-hourly",
    "mixpanel-people/people-daily",
    "mixpanel-identity/identity-daily",
    "mixpanel-backfill/backfill",
    "mixpanel-reconcile/reconcile-nightly",
    "mixpanel-gdpr/gdpr-daily",
    "mixpanel-upkeep/upkeep-daily",
    "crash-report/crash-report",
    "mixpanel-status/status",
}
ALWAYS_INSTALLED = (MixpanelCredentials, MixpanelGdprCredentials, LocalDestination, DuckDBWarehouse)
BLOCKS = {
    "credentials": ("mixpanel-credentials", "mixpanel"),
    "local": ("mixpanel-local-destination", "local"),
    "gdpr": ("mixpanel-gdpr-credentials", "mixpanel-gdpr"),
}


def expected_parameters(cluster: Cluster) -> dict[str, dict[str, object]]:
    """prefect.yaml names its blocks; `make deploy` pins them by id (what the UI's block pickers show)."""
    with cluster.client() as client:
        ref = {
            key: {"$ref": {"block_document_id": str(client.read_block_document_by_name(name, slug).id)}}
            for key, (slug, name) in BLOCKS.items()
        }
    plain: dict[str, object] = {"credentials": ref["credentials"], "destination": ref["local"]}
    sync: dict[str, object] = {"credentials": ref["credentials"], "destinations": [ref["local"]]}
    return {
        "reconcile-nightly": sync,
        "upkeep-daily": sync,
        "gdpr-daily": sync | {"gdpr_credentials": ref["gdpr"]},
        "crash-report": {},
    } | {
        name: plain
        for name in ("events-daily", "events-hourly", "people-daily", "identity-daily", "backfill", "status")
    }


def run_backfill(cluster: Cluster, **params: object) -> tuple[int, str]:
    return run_deployment(cluster, "mixpanel-backfill/backfill", **params)


def run_deployment(cluster: Cluster, name: str, **params: object) -> tuple[int, str]:
    """Start a run of the deployment and wait for its end, as `prefect deployment run --watch` does (the
    README's test runs that command; here the test's own client saves a CLI start, seconds of CPU)."""
    from prefect.deployments import run_deployment as start_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    values = {k: v.isoformat() if isinstance(v, date) else v for k, v in params.items()}
    with temporary_settings({PREFECT_API_URL: cluster.api_url}):
        run = synchronous(start_run(name, parameters=values, timeout=900, poll_interval=1))
    assert run.state is not None and run.state.is_final(), f"{name}: not ended in 900 s ({run.state})"
    if not run.state.is_completed():  # shown with the failing assertion: the run's one sentence
        print(f"{name} run {run.id} ended {run.state.name}: {run.state.message}")
    return (0 if run.state.is_completed() else 1), str(run.id)


def test_deploy_all_created_every_deployment_with_its_schedule(cluster: Cluster) -> None:
    with cluster.client() as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    names = {f"{flows[d.flow_id]}/{d.name}" for d in deployments}
    assert names == DEPLOYMENTS
    parameters = expected_parameters(cluster)
    for d in deployments:  # block references, loaded at run time: no secret is copied into a deployment
        assert d.parameters == parameters[d.name]
        assert d.job_variables == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
        dumped = json.dumps(d.model_dump(mode="json"))
        assert cluster.sandbox.cfg.secret not in dumped and cluster.sandbox.cfg.gdpr_oauth_token not in dumped
    crons = {d.name: [s.schedule.cron for s in d.schedules] for d in deployments}
    assert crons == {
        "events-daily": ["30 0 * * *"],
        "events-hourly": ["30 * * * *"],
        "people-daily": ["0 1 * * *"],
        "identity-daily": ["30 1 * * *"],
        "backfill": [],
        "reconcile-nightly": ["0 2 * * *"],
        "gdpr-daily": ["0 3 * * *"],
        "upkeep-daily": ["0 4 * * *"],
        "crash-report": [],
        "status": [],
    }
    with cluster.client() as client:
        registered = {b.slug for b in client.read_block_types()}
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits()}
        automations = {a.name for a in client.read_automations()}
    # deployed from an environment without extras: the project's own block types, no cloud's
    always = {cls.get_block_type_slug() for cls in ALWAYS_INSTALLED}
    assert always <= registered, "`make deploy` registered every block type of the project"
    extras = {cls.get_block_type_slug() for cls in BLOCK_TYPES} - always
    assert extras and not extras & registered, "a destination whose extra is not installed is not offered"
    with cluster.client() as client:
        assert client.read_work_pool("mixpanel").type == "process"
    assert limits == {
        "mixpanel-export-per-hour": 30,
        "mixpanel-export-per-second": 1,
        "mixpanel-export-in-flight": 100,
    }
    assert {"mixpanel-crashed-runs", "mixpanel-stuck-pending-runs", "mixpanel-crash-report"} <= automations


def test_a_backfill_run_lands_the_days(cluster: Cluster) -> None:
    days = recent_days(3, cluster.sandbox, back=25)
    code, _ = run_backfill(cluster, from_date=days[0], to_date=days[-1])
    assert code == 0, "the run did not complete"
    for day in days:
        assert_day_matches_sandbox(cluster.data, cluster.sandbox, day)


def test_a_future_to_date_fails_with_the_reason_and_writes_nothing(cluster: Cluster) -> None:
    before = cluster.sandbox.stats()["export_requests"]
    start = cluster.sandbox.cfg.current_day()
    code, run_id = run_backfill(cluster, from_date=start, to_date=start + timedelta(days=2))
    assert code != 0
    with cluster.client() as client:
        state = client.read_flow_run(UUID(run_id)).state
    assert state is not None and state.is_failed()
    assert "is in the future" in (state.message or ""), state.message
    assert cluster.sandbox.stats()["export_requests"] == before
    written = local_destination(cluster.data).partitions("mp_master_event")
    assert all(p < start.isoformat() for p in written), "no day of the refused range"


def test_a_20_day_backfill_fans_out_over_two_workers_within_the_rate_budget(cluster: Cluster) -> None:
    days = recent_days(20, cluster.sandbox, back=2)
    before = cluster.sandbox.stats()
    started = time.monotonic()
    code, parent = run_backfill(
        cluster,
        from_date=days[0],
        to_date=days[-1],
        days_per_run=5,
        days_per_request=1,
        max_concurrent_requests=4,
    )
    assert code == 0
    with cluster.client() as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(parent)])
            )
        )
    assert len(children) == 4 and all(r.state is not None and r.state.is_completed() for r in children)
    chunks = sorted(r.name for r in children)
    assert chunks == [f"backfill {days[i]}..{days[i + 4]}" for i in range(0, 20, 5)]

    dest = local_destination(cluster.data)
    owners = {}
    for day in days:
        assert_day_matches_sandbox(cluster.data, cluster.sandbox, day)
        manifest = dest.manifest("mp_master_event", day.isoformat())
        assert manifest is not None
        owners[day] = manifest.flow_run_id
    assert set(owners.values()) == {str(r.id) for r in children}, "each day was committed by its chunk's run"

    after = cluster.sandbox.stats()
    # A request the client itself saw fail (a timeout on a loaded machine) is retried whole and says
    # so in its run's log; any other extra request would be a day exported twice for nothing.
    retried = retry_lines(cluster, [r.id for r in children])
    assert after["export_requests"] - before["export_requests"] == 20 + len(retried), (
        "every day exported exactly once, plus the retries the runs logged",
        retried,
    )
    assert after["rate_limited"] == before["rate_limited"], "Mixpanel never had to refuse a request"
    recent = [t for t in after["request_times"] if t >= after["request_times"][-20]]
    assert max_in_one_second(recent) <= 3
    ran_on = {i for i in range(2) for r in children if str(r.id) in cluster.worker_log(i)}
    assert ran_on == {0, 1}, "both workers ran child runs"
    assert time.monotonic() - started < 900


def retry_lines(cluster: Cluster, runs: list[UUID]) -> list[str]:
    with cluster.client() as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs)))
    return [log.message for log in logs if re.search(r"attempt \d+/\d+ failed .*; retrying in", log.message)]


def max_in_one_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max(sum(1 for u in ordered if t <= u < t + 1.0) for t in ordered)


def test_reconcile_and_gdpr_deployments_run_with_their_block_lists(cluster: Cluster) -> None:
    """The list of destination references resolves at run time; an unchanged day stays as it is."""
    days = recent_days(2, cluster.sandbox, back=40)
    assert run_backfill(cluster, from_date=days[0], to_date=days[-1])[0] == 0
    dest = local_destination(cluster.data)
    before = {
        d: cluster.data.joinpath(dest.manifest_key("mp_master_event", d.isoformat())).read_bytes()
        for d in days
    }
    code, _ = run_deployment(
        cluster, "mixpanel-reconcile/reconcile-nightly", lookback_days=45, settle_hours=0
    )
    assert code == 0
    after = {
        d: cluster.data.joinpath(dest.manifest_key("mp_master_event", d.isoformat())).read_bytes()
        for d in days
    }
    assert after == before
    assert run_deployment(cluster, "mixpanel-gdpr/gdpr-daily")[0] == 0


def test_a_malformed_parameter_is_refused_before_a_run_exists(cluster: Cluster) -> None:
    with cluster.client() as client:
        before = len(client.read_flow_runs())
    for param, rule in (("from_date=2026/11/01", "from_date"), ("days_per_request=0", "days_per_request")):
        done = cluster.prefect(
            "deployment",
            "run",
            "mixpanel-backfill/backfill",
            "--param",
            "from_date=2026-11-01",
            "--param",
            param,
        )
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert rule in output, output
    with cluster.client() as client:
        assert len(client.read_flow_runs()) == before, "a refused parameter created no run"
