"""A real Prefect deployment on loopback: a Prefect server (SQLite), `make deploy`, process workers.

Session-scoped: starting the server and deploying takes ~30 s, so every test shares one; tests use
different days and compare the sandbox's counters before and after, never absolute numbers.
Every process gets its own PREFECT_HOME, so nothing touches the user's Prefect profile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxServer
from tests.conftest import start_sandbox
from tests.stores.process import free_port
from tests.stores.process import stop as stop_process

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Cluster:
    api_url: str
    env: dict[str, str]
    data: Path
    sandbox: SandboxServer
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def prefect(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=ROOT,
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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("prefect")
    logs = tmp_path_factory.mktemp("logs")
    data = tmp_path_factory.mktemp("data")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MP_PIPELINES_"))}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "MP_PIPELINES_STATE_DIR": str(home / "mp-state"),  # one rate budget for every worker of the host
        "PWD": str(ROOT),
        "PATH": f"{BIN}:{env.get('PATH', '')}",
    }
    server_log = logs / "server.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            # where the UI in the browser finds the API; SQLite waits up to 60 s for a lock (10 s by
            # default), since two workers polling on a loaded 2-core machine hold it for seconds at a time
            env=env | {"PREFECT_UI_API_URL": api_url, "PREFECT_API_DATABASE_TIMEOUT": "60"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sandbox = start_sandbox(events_per_day=300)
    cluster = Cluster(api_url, env | {"PREFECT_API_URL": api_url}, data, sandbox, logs)
    try:
        _wait_healthy(api_url, server, server_log)
        # as a user of Prefect Cloud or another server does: PREFECT_API_URL exported (README, "Operations")
        deploy = subprocess.run(
            ["make", "deploy", f"SANDBOX_URL={sandbox.url}", f"DATA_DIR={data}"],
            cwd=ROOT,
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
                            str(BIN / "prefect"),
                            "worker",
                            "start",
                            "--pool",
                            "mixpanel",
                            "--limit",
                            "2",
                            "--name",
                            f"worker-{index}",
                        ],
                        cwd=ROOT,
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
