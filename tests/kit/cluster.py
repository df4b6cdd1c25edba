"""A real Prefect deployment on loopback: a Prefect server (SQLite), `make deploy`, process workers.

Session-scoped: starting the server and deploying takes ~30 s, so every test shares one; tests use
different days and compare the sandbox's counters before and after, never absolute numbers.
Every process gets its own PREFECT_HOME, so nothing touches the user's Prefect profile.

It runs from a copy of the checkout bootstrapped as a fresh clone is (`make setup`: no extras; uv is
copied), as a deployment for the local folder is: each flow run then imports no cloud SDK (Prefect imports every
installed integration when it resolves a block, ~6 s of CPU per run with all of them).
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxServer
from tests.conftest import start_sandbox
from tests.kit.checkout import copy_checkout, user_environment
from tests.stores.process import free_port
from tests.stores.process import stop as stop_process

IDLE_SERVICES = (
    "SCHEDULER",
    "LATE_RUNS",
    "PAUSE_EXPIRATIONS",
    "CANCELLATION_CLEANUP",
    "REPOSSESSOR",
    "FOREMAN",
    "TRIGGERS",
)


@dataclass
class Cluster:
    checkout: Path
    api_url: str
    env: dict[str, str]
    data: Path
    sandbox: SandboxServer
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    @property
    def bin(self) -> Path:
        return self.checkout / ".venv" / "bin"

    def prefect(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "prefect"), *args],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def worker_log(self, index: int) -> str:
        return (self.logs / f"worker-{index}.log").read_text(errors="replace")

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)

    def fresh_hour(self) -> None:
        """The export budgets as an hour after the earlier tests' exports: the server's limits hold no
        slot and the host's budget (MP_PIPELINES_STATE_DIR) no start. The tests share one cluster, so
        otherwise a test would wait up to two minutes a request for the budget the ones before it
        spent, which grows with every test added and says nothing about the test itself."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

        from flows.limits import LIMITS

        with self.client() as client:
            for item in LIMITS:
                client.update_global_concurrency_limit(
                    item.name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )
        budget = Path(self.env["MP_PIPELINES_STATE_DIR"]) / "rate-budget.sqlite3"
        if budget.exists():
            with sqlite3.connect(budget) as conn:
                conn.execute("DELETE FROM starts")
        self.sandbox.reset()  # its own 60/hour window too


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Prefect server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Prefect server did not answer within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def _pause_schedules(cluster: Cluster) -> None:
    """The daily and hourly schedules would start runs in the middle of the tests: switch them off."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStateName

    with cluster.client() as client:
        for deployment in client.read_deployments():
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        scheduled = FlowRunFilter(state=dict(name=FlowRunFilterStateName(any_=["Scheduled"])))
        for run in client.read_flow_runs(flow_run_filter=scheduled):
            client.delete_flow_run(run.id)


@pytest.fixture(autouse=True)
def _fresh_hour_for_each_cluster_test(request: pytest.FixtureRequest) -> None:
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").fresh_hour()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    checkout = tmp_path_factory.mktemp("checkout")
    copy_checkout(checkout, with_uv=True)
    home = tmp_path_factory.mktemp("prefect")
    logs = tmp_path_factory.mktemp("logs")
    data = tmp_path_factory.mktemp("data")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = user_environment()
    bootstrap = subprocess.run(["make", "setup"], cwd=checkout, env=env, capture_output=True, text=True)
    assert bootstrap.returncode == 0, (
        f"make setup failed:\n{bootstrap.stdout[-3000:]}{bootstrap.stderr[-3000:]}"
    )
    bin = checkout / ".venv" / "bin"
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "MP_PIPELINES_STATE_DIR": str(home / "mp-state"),  # one rate budget for every worker of the host
        "PWD": str(checkout),
        "PATH": f"{bin}:{env.get('PATH', '')}",
    }
    server_log = logs / "server.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(
            [str(bin / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            # where the UI in the browser finds the API; SQLite waits up to 60 s for a lock (10 s by
            # default), since two workers polling on a loaded 2-core machine hold it for seconds at a
            # time; none of the server's services that act on their own (scheduled, late, paused or
            # lost runs, automations): the tests start every run themselves, the README drill tests
            # the automations, and each service costs CPU the suite's other tests wait for
            env=env
            | {"PREFECT_UI_API_URL": api_url, "PREFECT_API_DATABASE_TIMEOUT": "60"}
            | {f"PREFECT_SERVER_SERVICES_{service}_ENABLED": "false" for service in IDLE_SERVICES}
            # nor Prefect's own block types at start: `make deploy` registers the project's
            | {
                "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
                "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sandbox = start_sandbox(events_per_day=300)
    cluster = Cluster(checkout, api_url, env | {"PREFECT_API_URL": api_url}, data, sandbox, logs)
    try:
        _wait_healthy(api_url, server, server_log)
        # as a user of Prefect Cloud or another server does: PREFECT_API_URL exported (README, "Operations")
        deploy = subprocess.run(
            ["make", "deploy", f"SANDBOX_URL={sandbox.url}", f"DATA_DIR={data}"],
            cwd=checkout,
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (logs / "deploy.log").write_text(deploy.stdout + deploy.stderr)
        assert deploy.returncode == 0, (
            f"make deploy failed:\n{deploy.stdout[-3000:]}\n{deploy.stderr[-3000:]}"
        )
        _pause_schedules(cluster)  # before any worker polls: a test crossing hh:30 got an hourly run
        for index in range(2):
            with (logs / f"worker-{index}.log").open("wb") as out:
                cluster.workers.append(
                    subprocess.Popen(
                        [
                            str(bin / "prefect"),
                            "worker",
                            "start",
                            "--pool",
                            "mixpanel",
                            "--limit",
                            "2",
                            "--name",
                            f"worker-{index}",
                        ],
                        cwd=checkout,
                        env=cluster.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield cluster
    finally:
        for worker in cluster.workers:
            stop_process(worker)
        sandbox.stop()
        stop_process(server)
