"""Alerts (flows/alerts.py): a failed run, a crashed run, a stale daily export and days the reconcile could
not bring back in sync each reach a real local HTTP receiver exactly once, through a Prefect notification
block, with the deployment, the days and the reason, and no secret.

A Prefect server of its own, with the service that runs automations (the shared cluster of tests/kit/cluster.py
switches it off), `make deploy NOTIFY=<block>` in a copy of the checkout, one process worker, the sandbox,
and a receiver: a ThreadingHTTPServer on 127.0.0.1 keeping every POST body. The Mixpanel credentials block
holds the sandbox's secret, the webhook block one of its own: neither may appear in any message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.alerts import (
    CRASH_CONFIRM,
    DAILY_DEPLOYMENT,
    DAILY_FLOW,
    RUN_ENDED_BODY,
    UNSYNCED_BODY,
    automations,
)
from sandbox import SandboxServer
from tasks.sync.reconcile import still_differing, unsynced_sentence
from tests.conftest import read_day, recent_days, start_sandbox
from tests.kit.checkout import copy_checkout, user_environment
from tests.kit.cluster import IDLE_SERVICES, _pause_schedules, _wait_healthy
from tests.stores.process import descendants, free_port
from tests.stores.process import stop as stop_process

BLOCK = "alerts-hook"
HOOK_SECRET = "hook-secret-4f9c1e"  # the webhook block's own secret: in no message
ARRIVES_WITHIN = 60.0
CRASH_TOLD_WITHIN = CRASH_CONFIRM.total_seconds() + ARRIVES_WITHIN  # a crash is told once confirmed
ALERTS = ("mixpanel-run-failed", "mixpanel-run-crashed", "mixpanel-freshness", "mixpanel-reconcile-unsynced")


class Receiver:
    """A local HTTP endpoint keeping the JSON body of every POST, with when it arrived."""

    def __init__(self) -> None:
        self.bodies: list[tuple[float, dict[str, Any]]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((time.time(), json.loads(raw)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None: ...

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, text: str, since: float, seconds: float = ARRIVES_WITHIN) -> list[dict[str, Any]]:
        """The messages since ``since`` whose body holds ``text``, once there is one (or after ``seconds``)."""
        deadline = time.time() + seconds
        while time.time() < deadline and not self.matching(text, since):
            time.sleep(0.5)
        return self.matching(text, since)

    def matching(self, text: str, since: float) -> list[dict[str, Any]]:
        return [body for at, body in list(self.bodies) if at >= since and text in body["body"]]

    def arrived(self, text: str) -> float:
        """When the first message holding ``text`` arrived (wall clock)."""
        return min(at for at, body in list(self.bodies) if text in body["body"])


@dataclass
class Alerting:
    checkout: Path
    api_url: str
    env: dict[str, str]
    sandbox: SandboxServer
    receiver: Receiver
    logs: Path
    deploy_output: str
    data: Path  # the DATA_DIR of `make deploy`
    worker: subprocess.Popen[bytes] | None = None
    started: list[float] = field(default_factory=list)

    def setup(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.checkout / ".venv" / "bin" / "python"), "-m", "flows.setup", *args],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)

    def run(self, deployment: str, timeout: float = 600, **params: object) -> Any:
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return run_deployment(deployment, parameters=params, timeout=timeout, poll_interval=1)

    def secrets(self) -> list[str]:
        cfg = self.sandbox.cfg
        return [HOOK_SECRET, cfg.secret, cfg.project_token, cfg.gdpr_oauth_token]

    def assert_no_secret(self) -> None:
        for _, body in self.receiver.bodies:
            for secret in self.secrets():
                assert secret not in json.dumps(body), body


def _save_blocks(api_url: str, receiver: Receiver) -> None:
    """The webhook block `make deploy NOTIFY=` names, as docs/alerts.md creates it."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        CustomWebhookNotificationBlock(
            name="alerts",
            url=receiver.url,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            headers={"X-Token": "{{token}}"},  # a secret the block sends, never the message
            secrets={"token": HOOK_SECRET},
            allow_private_urls=True,
        ).save(BLOCK)


@pytest.fixture(scope="module")
def alerting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alerting]:
    checkout = tmp_path_factory.mktemp("checkout")
    copy_checkout(checkout, with_uv=True)
    home, logs, data = (tmp_path_factory.mktemp(name) for name in ("prefect", "logs", "data"))
    env = user_environment()
    bootstrap = subprocess.run(["make", "setup"], cwd=checkout, env=env, capture_output=True, text=True)
    assert bootstrap.returncode == 0, bootstrap.stdout[-3000:] + bootstrap.stderr[-3000:]
    bin = checkout / ".venv" / "bin"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "MP_PIPELINES_STATE_DIR": str(home / "mp-state"),
        "PWD": str(checkout),
        "PATH": f"{bin}:{env.get('PATH', '')}",
    }
    with (logs / "server.log").open("wb") as out:
        server = subprocess.Popen(
            [str(bin / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            # every service that acts on its own but the automations' (TRIGGERS and its actions)
            env=env
            | {"PREFECT_API_DATABASE_TIMEOUT": "60"}
            | {f"PREFECT_SERVER_SERVICES_{s}_ENABLED": "false" for s in IDLE_SERVICES if s != "TRIGGERS"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sandbox = start_sandbox(events_per_day=300)
    receiver = Receiver()
    worker = None
    try:
        _wait_healthy(api_url, server, logs / "server.log")
        _save_blocks(api_url, receiver)
        deploy = subprocess.run(
            ["make", "deploy", f"SANDBOX_URL={sandbox.url}", f"DATA_DIR={data}", f"NOTIFY={BLOCK}"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (logs / "deploy.log").write_text(deploy.stdout + deploy.stderr)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        alerting = Alerting(checkout, api_url, env, sandbox, receiver, logs, deploy.stdout, data)
        _pause_schedules(alerting)  # type: ignore[arg-type]  # it only asks for .client()
        with (logs / "worker.log").open("wb") as out:
            worker = subprocess.Popen(
                [str(bin / "prefect"), "worker", "start", "--pool", "mixpanel", "--name", "alerts"],
                cwd=checkout,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        alerting.worker = worker
        yield alerting
    finally:
        if worker is not None:
            stop_process(worker)
        receiver.server.shutdown()
        sandbox.stop()
        stop_process(server)


# --- the messages: what they may name, built from the reconcile's findings -------------------------


def test_the_messages_name_nothing_but_names_states_dates_and_the_events_days_and_reason() -> None:
    import re

    allowed = {
        "flow.name",
        "deployment.name",
        "flow_run.name",
        "flow_run.state.name",
        "flow_run.state.message",
        "flow_run.parameters.from_date",
        "flow_run.parameters.to_date",
        "event.resource['mixpanel.days']",
        "event.resource['mixpanel.reason']",
    }
    texts = [RUN_ENDED_BODY, UNSYNCED_BODY] + [
        getattr(action, part)
        for automation in automations("00000000-0000-0000-0000-000000000001")
        for action in automation.actions
        for part in ("subject", "body")
    ]
    expressions = [e for text in texts for e in re.findall(r"\{[{%](.*?)[%}]\}", text)]
    unquoted = [re.sub(r"'[^']*'(?!\])", "", e) for e in expressions]
    names = r"\b(?:flow_run|flow|deployment|event)\b[\w.]*(?:\['[\w.]+'\])?"
    used = {m for e in unquoted for m in re.findall(names, e)}
    assert used and used <= allowed, used - allowed


def test_a_day_still_differing_after_its_export_is_told_in_one_sentence() -> None:
    from collections import Counter

    day, other = date(2026, 3, 1), date(2026, 3, 2)
    theirs = {day: Counter({"a": 5, "b": 2}), other: Counter({"a": 1})}
    found = still_differing({day: {"a": 5, "b": 1}, other: {"a": 1}}, theirs)
    assert found == {day: "Mixpanel counts 7, the export counted 6"}
    said = unsynced_sentence(found, "local folder /data")
    assert said.startswith(
        "1 day(s) of local folder /data still differ from Mixpanel after being exported again"
    )
    assert "2026-03-01: Mixpanel counts 7, the export counted 6" in said and said.endswith(".")


# --- on the server ---------------------------------------------------------------------------------


def test_make_deploy_creates_each_alert_once_and_again_replaces_them(alerting: Alerting) -> None:
    assert f"alerts: {', '.join(ALERTS)}" in alerting.deploy_output
    again = alerting.setup("--notify", f"custom-webhook/{BLOCK}")  # the type's slug may be written too
    assert again.returncode == 0, again.stderr
    missing = alerting.setup("--notify", "no-such-block")
    assert missing.returncode != 0
    assert "NOTIFY=no-such-block: no notification block is named so" in missing.stderr
    without = alerting.setup()
    assert "alerts: none: `make deploy NOTIFY=<block name>`" in without.stdout
    with alerting.client() as client:
        client.read_deployment_by_name(f"{DAILY_FLOW}/{DAILY_DEPLOYMENT}")  # what freshness watches exists
        for name in ALERTS:
            (automation,) = client.read_automations_by_name(name)
            assert automation.enabled


def test_a_failed_run_is_told_once_with_its_deployment_days_and_reason(alerting: Alerting) -> None:
    start = alerting.sandbox.cfg.current_day() + timedelta(days=2)  # in the future: refused
    since = time.time()
    run = alerting.run("mixpanel-backfill/backfill", from_date=start.isoformat())
    assert run.state.is_failed(), run.state
    (message,) = alerting.receiver.wait_for(run.name, since)
    assert message["subject"] == "Mixpanel pipelines: backfill Failed"
    body = message["body"]
    assert body.startswith(f"mixpanel-backfill/backfill: run {run.name} Failed (days {start}..{start}): ")
    assert "InvalidDateRangeError" in body and "is in the future" in body, body
    print(f"failed run: told {_lag(alerting, run):.1f} s after it ended")
    time.sleep(5)  # nothing more comes of it
    assert len(alerting.receiver.matching(run.name, since)) == 1
    alerting.assert_no_secret()


def test_a_killed_run_is_told_once_as_crashed(alerting: Alerting) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    (day,) = recent_days(1, alerting.sandbox, back=20)
    alerting.sandbox.state.faults.add([{"kind": "slow_first_byte", "seconds": 300}] * 4)  # it hangs
    with alerting.client() as client:
        deployment = client.read_deployment_by_name("mixpanel-backfill/backfill")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"from_date": day.isoformat()})
    try:
        pid = _flow_run_process(alerting, str(run.id))
        since = time.time()
        os.kill(pid, signal.SIGKILL)
        (message,) = alerting.receiver.wait_for(run.name, since, seconds=CRASH_TOLD_WITHIN)
    finally:
        alerting.sandbox.state.faults.reset()
    assert message["subject"] == "Mixpanel pipelines: backfill Crashed"
    assert message["body"].startswith(
        f"mixpanel-backfill/backfill: run {run.name} Crashed (days {day}..{day}): "
    )
    print(
        f"killed run: told {alerting.receiver.arrived(run.name) - since:.1f} s after the kill: {message['body']}"
    )
    time.sleep(5)
    assert len(alerting.receiver.matching(run.name, since)) == 1
    with alerting.client() as client:
        (ended,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert ended.state.is_crashed()
    alerting.assert_no_secret()


def test_a_run_left_crashed_is_told_once_and_a_run_revived_within_the_minute_is_not(
    alerting: Alerting,
) -> None:
    """As `mixpanel-crashed-runs` ends a run whose worker is gone: its state forced to Crashed. A server
    back from an outage does the same to a live run, which sets itself back to Running (flows.outage)."""
    from prefect.states import Cancelled, Crashed, Pending, Running

    from flows.setup import CRASH_AUTOMATIONS

    left_day, revived_day = recent_days(2, alerting.sandbox, back=21)
    why = CRASH_AUTOMATIONS["mixpanel-crashed-runs"][2]
    with alerting.client() as client:
        deployment = client.read_deployment_by_name("mixpanel-backfill/backfill")
        left, revived = (  # Pending: no worker takes them (they take Scheduled)
            client.create_flow_run_from_deployment(
                deployment.id, parameters={"from_date": day.isoformat()}, state=Pending()
            )
            for day in (left_day, revived_day)
        )
        since = time.time()
        for run in (left, revived):
            client.set_flow_run_state(run.id, Crashed(message=why), force=True)
        time.sleep(3)
        client.set_flow_run_state(revived.id, Running(), force=True)
    (message,) = alerting.receiver.wait_for(left.name, since, seconds=CRASH_TOLD_WITHIN)
    told_after = alerting.receiver.arrived(left.name) - since
    assert message["subject"] == "Mixpanel pipelines: backfill Crashed"
    assert message["body"] == (
        f"mixpanel-backfill/backfill: run {left.name} Crashed (days {left_day}..{left_day}): {why}"
    )
    assert told_after >= CRASH_CONFIRM.total_seconds() - 1, "told before the crash was confirmed"
    print(f"crashed for lack of heartbeats: told {told_after:.1f} s after")
    time.sleep(5)
    assert len(alerting.receiver.matching(left.name, since)) == 1
    assert alerting.receiver.matching(revived.name, since) == [], "a revived run was told as crashed"
    with alerting.client() as client:
        client.set_flow_run_state(revived.id, Cancelled(), force=True)
    alerting.assert_no_secret()


def mixpanel_count(rows: pl.DataFrame) -> int:
    """Rows counted as Mixpanel's query API counts them: once per (name, distinct_id, time, $insert_id),
    every row without an $insert_id."""
    keyed = rows.filter(pl.col("insert_id").is_not_null())
    unique = keyed.unique(["event_name", "distinct_id", "time", "insert_id"]).height
    return unique + rows.height - keyed.height


def test_days_the_reconcile_cannot_bring_in_sync_are_told_once(alerting: Alerting) -> None:
    (day,) = recent_days(1, alerting.sandbox)
    done = alerting.run("mixpanel-backfill/backfill", from_date=day.isoformat())
    assert done.state.is_completed(), done.state
    # from now on Mixpanel's query API counts 3 events more than any export of the day holds
    alerting.sandbox.set_quirks([{"kind": "count_extra", "day": day.isoformat(), "index": 3}])
    try:
        since = time.time()
        run = alerting.run("mixpanel-reconcile/reconcile-nightly", lookback_days=1, settle_hours=0)
        assert run.state.is_completed(), run.state
        (message,) = alerting.receiver.wait_for(f"{day}: Mixpanel counts", since)
    finally:
        alerting.sandbox.set_quirks([])
    assert message["subject"] == "Mixpanel pipelines: days not in sync"
    body = message["body"]
    assert body.startswith(
        f"mixpanel-reconcile/reconcile-nightly: {day} not in sync with Mixpanel: 1 day(s) of "
    )
    # Mixpanel's count is deduplicated: on some days the generated data holds duplicates, so it is the
    # count of the stored rows (counted here, not by the pipeline), not the served rows, that is quoted
    counted = mixpanel_count(read_day(alerting.data, day))
    assert f"{day}: Mixpanel counts {counted + 3}, the export counted {counted}" in body, body
    print(f"unsynced days: told {_lag(alerting, run, str(day)):.1f} s after the reconcile ended")
    time.sleep(5)
    assert len(alerting.receiver.matching(str(day), since)) == 1
    alerting.assert_no_secret()


def test_a_stale_daily_export_is_told_once_a_period_after_the_last_completed_run(alerting: Alerting) -> None:
    # 72 s instead of 26 h; the schedules are paused, so only the run below completes
    set_at = time.time()
    short = alerting.setup("--notify", BLOCK, "--freshness-hours", "0.02")
    assert short.returncode == 0, short.stderr
    try:
        run = alerting.run("mixpanel-events/events-daily")
        assert run.state.is_completed(), run.state
        completed = run.state.timestamp.timestamp()
        assert completed < set_at + 72, "events-daily took longer than the period: nothing is tested"
        (message,) = alerting.receiver.wait_for("no run has Completed", set_at, seconds=150)
        assert message == {
            "subject": "Mixpanel pipelines: events-daily is behind",
            "body": "mixpanel-events/events-daily: no run has Completed for more than 72 seconds; "
            "the newest days may be missing from the destination.",
        }
        first = alerting.receiver.arrived("no run has Completed")
        assert first >= completed + 72 - 1, "the period counts from the newest completed run"
        print(f"freshness: told {first - completed - 72:.1f} s after 72 s without a completed run")
        time.sleep(15)  # the next one comes a whole period after the first, not before
        assert len(alerting.receiver.matching("no run has Completed", set_at)) == 1
    finally:
        assert alerting.setup("--notify", BLOCK).returncode == 0  # 26 h again
    alerting.assert_no_secret()


def _flow_run_process(alerting: Alerting, run_id: str, seconds: float = 120) -> int:
    """The pid of the worker's child process running ``run_id``, once it is Running."""
    assert alerting.worker is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid, env in descendants(alerting.worker.pid).items():
            if env.get("PREFECT__FLOW_RUN_ID") == run_id:
                with alerting.client() as client:
                    if client.read_flow_run(run_id).state.is_running():
                        return pid
        time.sleep(0.5)
    pytest.fail(f"no process runs {run_id}:\n{(alerting.logs / 'worker.log').read_text()[-3000:]}")


def _lag(alerting: Alerting, run: Any, text: str | None = None) -> float:
    """Seconds from the run's end (its final state's time on the server) to its message's arrival."""
    return alerting.receiver.arrived(text or run.name) - run.state.timestamp.timestamp()
