"""Running the product unattended, as README.md's "In production" and docs/operations.md's "Other work
pools" say: what the product's make targets install (no dev group), a Prefect server on a real
PostgreSQL started by the README's own commands, and the worker image's install steps as
docs/operations.md builds it (docker/install.sh: no container engine runs here, so the Dockerfile's
build step is run as the script it is, outside a container).

The README's PostgreSQL block runs word for word in a copy of the checkout bootstrapped as a fresh
clone is; only where state goes (PREFECT_HOME) and the server's port (PREFECT_PORT, so that it runs
beside the README drill on 4200) are given, and the server registers no block type at start (~9 s).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from tests.conftest import assert_day_matches_sandbox, local_destination, recent_days, start_sandbox
from tests.kit.checkout import ROOT, copy_checkout, user_environment
from tests.kit.docs_text import marked_block, page_text
from tests.stores.process import free_port

pytestmark = pytest.mark.slow

OPERATIONS = "docs/operations.md"  # "Other work pools": the worker image's block and prefect.yaml
DEV_PACKAGES = ("pytest", "moto", "mypy", "ruff", "playwright", "fakesnow")

# a flow run through the server, then the row the server wrote for it, read back from PostgreSQL
FLOW = """
import asyncio, os
import asyncpg
from prefect import flow

@flow(name="on-postgres")
def on_postgres() -> int:
    return 42

assert on_postgres() == 42

async def state() -> str:
    url = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(
            "select r.state_type from flow_run r join flow f on f.id = r.flow_id where f.name = 'on-postgres'"
        )
    finally:
        await connection.close()

print("state:", asyncio.run(state()))
"""


def installed(python: Path) -> set[str]:
    listed = subprocess.run(
        [str(ROOT / ".tools" / "bin" / "uv"), "pip", "list", "--python", str(python), "--format", "freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("==", 1)[0].lower() for line in listed.splitlines() if "==" in line}


def make(clone: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["make", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"make {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    # under root, PostgreSQL runs as the user postgres, who must enter the clone: pytest's own temporary
    # folders are private to their owner
    base = Path(tempfile.mkdtemp(prefix="mp-production-"))
    base.chmod(0o755)
    copy_checkout(base, with_uv=True)
    try:
        yield base
    finally:
        subprocess.run(["make", "postgres-stop"], cwd=base, env=user_environment(), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_a_prefect_server_runs_flows_on_postgresql_as_the_readme_says(clone: Path) -> None:
    commands = marked_block("postgres")
    assert commands == ["make postgres", "make server DB=postgres"], "the README's PostgreSQL block changed"
    env = user_environment() | {
        "PREFECT_HOME": str(clone / "prefect-home"),
        "PREFECT_PORT": str(free_port()),
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    }
    started = subprocess.run(
        ["bash", "-e", "-c", commands[0]], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stdout + started.stderr
    url = (clone / "data" / "postgres" / "url").read_text().strip()
    password = re.search(r"://postgres:([^@]+)@", url).group(1)  # type: ignore[union-attr]
    assert (clone / "data" / "postgres" / "url").stat().st_mode & 0o077 == 0

    log = clone / "server.log"
    server = _start_server(clone, env, log, commands[1])
    api = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
    try:
        _wait_healthy(api, server, log)

        # `make server` bootstrapped the clone: a production target, no test tools
        python = clone / ".venv" / "bin" / "python"
        assert not set(DEV_PACKAGES) & installed(python)

        ran = subprocess.run(
            [str(python), "-c", FLOW],
            cwd=clone,
            env=env | {"PREFECT_API_URL": api, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert "state: COMPLETED" in ran.stdout
    finally:
        _kill_group(server)
    output = started.stdout + started.stderr + log.read_text(errors="replace")
    assert password not in output
    assert "database is locked" not in output


def test_a_test_sync_after_a_production_one_adds_the_dev_group_and_neither_removes(clone: Path) -> None:
    env = user_environment()
    python = clone / ".venv" / "bin" / "python"
    make(clone, "setup", env=env)
    assert not set(DEV_PACKAGES) & installed(python)
    make(clone, "setup", "DEV=1", env=env)
    assert set(DEV_PACKAGES) <= installed(python)
    # a production target started while tests run from the same .venv takes nothing away from them
    make(clone, "setup", env=env)
    assert set(DEV_PACKAGES) <= installed(python)


def test_the_worker_image_installs_the_flows_without_test_tools(tmp_path: Path) -> None:
    build = next(line for line in marked_block("image", OPERATIONS) if line.startswith("docker build"))
    words = shlex.split(build)
    extras = next(w.split("=", 1)[1] for w in words if w.startswith("EXTRAS=")).split()
    tag = words[words.index("-t") + 1]
    pools = page_text(OPERATIONS)
    assert f"image: {tag}" in pools, "the prefect.yaml example must name the image the page builds"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11-slim\n" in dockerfile
    assert "    /tmp/src/docker/install.sh /opt/mixpanel-pipelines $EXTRAS" in dockerfile
    assert "WORKDIR /opt/mixpanel-pipelines" in dockerfile
    assert "directory: /opt/mixpanel-pipelines" in pools

    app = tmp_path / "opt" / "mixpanel-pipelines"
    done = subprocess.run(
        [str(ROOT / "docker" / "install.sh"), str(app), *extras],
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    python = app / ".venv" / "bin" / "python"
    packages = installed(python)
    assert not set(DEV_PACKAGES) & packages
    assert {"prefect", "asyncpg", "prefect-aws"} <= packages
    # from the image's folder, as a flow run of a Docker or Kubernetes pool loads its entrypoint
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import flows.events, flows.backfill, blocks.destinations.s3; print(flows.events.__file__)",
        ],
        cwd=app,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip() == str(app / "flows" / "events.py")
    assert (app / ".venv" / "bin" / "prefect").exists() and (app / "prefect.yaml").exists()


# --- a run outlives a restart of its server (PostgreSQL, as in production) ------------------------------
# past the 90 s after which the heartbeat automation calls a silent run Crashed: the restarted server may
# mark the live run Crashed, which sets itself back to Running within seconds and ends Completed
OUTAGE_SECONDS = 100
REVIVED_WITHIN = 30.0


def _start_server(
    clone: Path, env: dict[str, str], log: Path, command: str = "make server DB=postgres"
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["bash", "-c", command],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make, prefect and the server's children stop together
        )


def _wait_healthy(api: str, server: subprocess.Popen[bytes], log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, f"make server DB=postgres exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def _tail(log: Path) -> str:
    """The lines a person reads first in a worker's log: no traceback's indented frames."""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(line[:300] for line in lines if not line.startswith(" "))[-6000:]


def _all_slots_free(client: Any, name: str, limit: int) -> bool:
    """Whether every slot of ``name`` can be taken (then given back): the server applies a limit's decay
    when slots are asked for, not when the limit is read."""
    try:
        client.increment_concurrency_slots(names=[name], slots=limit, mode="concurrency")
    except httpx.HTTPStatusError as refused:
        assert refused.response.status_code == 423, refused
        return False
    client.release_concurrency_slots(names=[name], slots=limit, occupancy_seconds=1.0)
    return True


def _run_logs(client: Any, run_id: str) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return [
        entry.message for entry in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    ]


def _final_state(client: Any, run_id: str, worker_log: Path) -> Any:
    """The run's final state, a Crashed it is revived from within REVIVED_WITHIN not counted."""
    deadline = time.monotonic() + 600
    crashed_at: float | None = None
    while True:
        assert time.monotonic() < deadline, "the run did not end within 10 minutes of the restart"
        state = client.read_flow_run(run_id).state
        if not state.is_crashed():
            crashed_at = None
            if state.is_final():
                return state
        else:
            crashed_at = crashed_at or time.monotonic()
            assert time.monotonic() - crashed_at < REVIVED_WITHIN, (
                f"Crashed for {REVIVED_WITHIN:.0f} s: {state.message}\n{_tail(worker_log)}"
            )
        time.sleep(1)


def _committed(root: Path, days: list[date]) -> set[date]:
    data = local_destination(root)
    return {day for day in days if data.manifest("mp_master_event", day.isoformat()) is not None}


def test_a_run_goes_on_through_a_restart_of_its_postgresql_server(clone: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Crashed

    from flows.setup import CRASH_AUTOMATIONS

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = user_environment() | {
        "PREFECT_HOME": str(clone / "prefect-home-restart"),
        "PREFECT_PORT": str(port),
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "MP_PIPELINES_STATE_DIR": str(clone / "mp-state-restart"),
    }
    make(clone, "postgres", env=env)  # started again if the test above made it
    data = clone / "data-restart"
    log = clone / "server-restart.log"
    sandbox = start_sandbox(events_per_day=300)
    server = _start_server(clone, env, log)
    worker: subprocess.Popen[bytes] | None = None
    try:
        _wait_healthy(api, server, log)
        make(
            clone,
            "deploy",
            f"SANDBOX_URL={sandbox.url}",
            f"DATA_DIR={data}",
            env=env | {"PREFECT_API_URL": api},
        )
        with (clone / "worker-restart.log").open("wb") as out:
            worker = subprocess.Popen(
                ["bash", "-c", "make worker"],
                cwd=clone,
                env=env | {"PREFECT_API_URL": api},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        days = recent_days(14, sandbox, back=10)  # ~3 minutes of export: it outlasts the outage
        # every request answers after 12 s: the run is in the middle of its days when the server stops
        sandbox.add_faults([{"kind": "slow_first_byte", "seconds": 12}] * len(days))
        started = subprocess.run(
            [
                str(clone / ".venv" / "bin" / "prefect"),
                "deployment",
                "run",
                "mixpanel-backfill/backfill",
                f"--param=from_date={days[0]}",
                f"--param=to_date={days[-1]}",
                "--param=days_per_request=1",
                "--param=max_concurrent_requests=1",
            ],
            cwd=clone,
            env=env | {"PREFECT_API_URL": api},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 300
        while not _committed(data, days):
            assert time.monotonic() < deadline, (
                f"no day committed within 300 s:\n{(clone / 'worker-restart.log').read_text()[-3000:]}"
            )
            time.sleep(0.5)

        _kill_group(server)
        before = _committed(data, days)
        time.sleep(OUTAGE_SECONDS)
        during = _committed(data, days)
        assert len(during) > len(before), (
            f"the run stopped committing while its server was away:\n{_tail(clone / 'worker-restart.log')}"
        )
        server = _start_server(clone, env, log)
        _wait_healthy(api, server, log)

        with SyncPrefectClient(api) as client:
            # what `mixpanel-crashed-runs` does to a run it did not hear from for 90 s, if the restarted
            # server has not done it already: the live run sets itself back to Running and goes on
            alive = client.read_flow_run(UUID(run_id)).state
            # Crashed is what the restarted server may already have made of it: the run revives itself
            # from that within REVIVED_WITHIN (_final_state); any other end is the outage's doing
            assert alive is not None and (alive.is_crashed() or not alive.is_final()), (
                f"the run ended in the outage: {alive}"
            )
            why = CRASH_AUTOMATIONS["mixpanel-crashed-runs"][2]
            client.set_flow_run_state(UUID(run_id), Crashed(message=why), force=True)
            state = _final_state(client, run_id, clone / "worker-restart.log")
            assert state.is_completed(), (
                f"{state.type}: {state.message}\n{_tail(clone / 'worker-restart.log')}"
            )
            # the run's last lines reach the server after its final state, as its process drains them
            deadline = time.monotonic() + 60
            logs = _run_logs(client, run_id)
            while not any(m.startswith("Finished in state") for m in logs):
                assert time.monotonic() < deadline, "\n".join(logs)
                time.sleep(1)
                logs = _run_logs(client, run_id)
            text = "\n".join(logs)
            assert any(m.startswith("The Prefect server was unreachable for ") for m in logs), text
            assert "Traceback" not in text and "This run crashed" not in text, text
            # the test's Crashed and the automation's may both land before one revival
            history = [s.type.value for s in client.read_flow_run_states(UUID(run_id))]
            last_crash = max(i for i, kind in enumerate(history) if kind == "CRASHED")
            assert "RUNNING" in history[last_crash:] and history[-1] == "COMPLETED", history
            assert any(m.startswith("The server marked this run Crashed") for m in logs), text
            print(f"states after the restart: {history[history.index('CRASHED') :]}")
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            assert tasks and {t.state.type.value for t in tasks if t.state} == {"COMPLETED"}, [
                (t.name, t.state) for t in tasks
            ]
            # no slot outlives its holder: the one held when the server stopped (its lease forgotten by the
            # restart) decays; the whole in-flight limit can be taken again
            deadline = time.monotonic() + 240
            while not _all_slots_free(client, "mixpanel-export-in-flight", 100):
                assert time.monotonic() < deadline, "an export slot outlived its run"
                time.sleep(5)
        for day in days:
            assert_day_matches_sandbox(data, sandbox, day)
    finally:
        if worker is not None:
            _kill_group(worker)
        _kill_group(server)
        sandbox.stop()
