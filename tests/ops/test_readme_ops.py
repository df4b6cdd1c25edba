"""The README's operations path, run as a new user runs it: its own commands, read from README.md.

The commands of the two README blocks marked ``<!-- ops:services -->`` and ``<!-- ops:run -->`` are run
word for word in a copy of this checkout (what `git clone` would give, plus uncommitted changes), on the
README's fixed ports 4200 and 8765, with no variable the README does not give. Only where state goes is
redirected, so a developer's own Prefect profile and rate budget are untouched: ``PREFECT_HOME`` and
``MP_PIPELINES_STATE_DIR`` point into the test's temporary folder.

Then the crash drill of "When something goes wrong": SIGKILL of the worker and of some flow-run
processes in the middle of a backfill; every run must end Crashed, and the backfill run again must land
every day exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import local_destination
from tests.kit.checkout import copy_checkout, user_environment
from tests.kit.docs_text import marked_block
from tests.stores.process import descendants

pytestmark = pytest.mark.slow

SERVER_API = "http://127.0.0.1:4200/api"
SANDBOX = "http://127.0.0.1:8765"
LONG_RUNNING = ("make server", "make sandbox", "make worker")


@dataclass
class Stack:
    clone: Path
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    pending_run: str | None = None  # the crash drill's run left Pending, made once `make deploy` is done

    def start(self, command: str, name: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.clone,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: make, the tool and its children
            )
        self.processes[name] = process
        return process

    def run(self, script: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        done = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.timings[script.strip().splitlines()[-1]] = time.monotonic() - began
        return done

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(SERVER_API)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is free
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for(url: str, stack: Stack, name: str, seconds: float = 300) -> None:
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if stack.processes[name].poll() is not None:
            pytest.fail(f"`{name}` exited early:\n{stack.log(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"`{name}` did not answer at {url} within {seconds:.0f} s:\n{stack.log(name)}")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for port in (4200, 8765):
        if not _port_free(port):
            pytest.fail(
                f"port {port} is taken: stop your own `make server` / `make sandbox` to run this test"
            )
    base = tmp_path_factory.mktemp("readme-ops")
    clone, logs = base / "clone", base / "logs"
    clone.mkdir()
    logs.mkdir()
    copy_checkout(clone)
    env = user_environment()
    env |= {"PREFECT_HOME": str(base / "prefect-home"), "MP_PIPELINES_STATE_DIR": str(base / "mp-state")}
    env["PWD"] = str(clone)
    stack = Stack(clone, env, logs)
    try:
        yield stack
    finally:
        for process in reversed(list(stack.processes.values())):
            _kill_group(process)
        print("README command timings (s):", {k: round(v, 1) for k, v in stack.timings.items()})


def test_the_readme_operations_path_runs_as_written(stack: Stack) -> None:
    services = marked_block("services")
    assert services == ["make server", "make sandbox", "make deploy", "make worker"], (
        "the README's services block changed: update this test's expectations of which commands keep running"
    )
    began = time.monotonic()
    stack.start("make server", "server")
    stack.start("make sandbox", "sandbox")  # at the same time: the bootstrap must not race
    _wait_for(f"{SANDBOX}/_sandbox/stats", stack, "sandbox")
    stack.timings["make sandbox (ready, bootstrap included)"] = time.monotonic() - began
    _wait_for(f"{SERVER_API}/health", stack, "server")
    stack.timings["make server (ready)"] = time.monotonic() - began
    deploy = stack.run("make deploy", timeout=900)
    assert deploy.returncode == 0, f"make deploy failed:\n{deploy.stdout[-3000:]}\n{deploy.stderr[-3000:]}"
    assert "Recursive variable" not in deploy.stderr
    # for the crash drill below: Prefect marks it Crashed 180 s after it went Pending, a wait that runs
    # beside the rest of this test instead of after it (the automation exists once `make deploy` is done)
    stack.pending_run = _a_run_left_pending(stack)
    stack.start("make worker", "worker")

    run = marked_block("run")
    assert run[0] == f"export PREFECT_API_URL={SERVER_API}", (
        "the README must say which server prefect talks to"
    )
    done = stack.run("\n".join(run), timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{output[-3000:]}\nworker:\n{stack.log('worker')}"
    assert "Completed" in output
    assert "database is locked" not in output and "temporary server" not in output

    yesterday = datetime.now(UTC).date() - timedelta(days=1)  # the README's sandbox project is on UTC
    expected = httpx.get(
        f"{SANDBOX}/_sandbox/expected", params={"from_date": str(yesterday), "to_date": str(yesterday)}
    ).json()[str(yesterday)]
    manifest = local_destination(stack.clone / "data").manifest("mp_master_event", str(yesterday))
    assert manifest is not None
    assert (manifest.rows, manifest.fingerprint) == (expected["rows"], expected["fingerprint"])


def _flow_run_pids(stack: Stack) -> dict[str, int]:
    by_run: dict[str, int] = {}
    for pid, env in descendants(stack.processes["worker"].pid).items():
        run = env.get("PREFECT__FLOW_RUN_ID")
        if run and run not in by_run:
            by_run[run] = pid
    return by_run


def _worker_pid(stack: Stack) -> int:
    for pid in descendants(stack.processes["worker"].pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"worker start" in cmdline:
            return pid
    pytest.fail("no `prefect worker start` process under `make worker`")


def _states(stack: Stack, ids: list[str]) -> dict[str, str]:
    with stack.client() as client:
        return {run: client.read_flow_run(run).state.type.value for run in ids}


def _wait_for_heartbeats(stack: Stack, runs: list[str], seconds: float = 120) -> None:
    """Until the server has stored a heartbeat event of each run."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = {f"prefect.flow-run.{run}" for run in runs}
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        only = EventFilter(  # made anew each time: its time window ends when it is made
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=sorted(wanted)),
        )
        with stack.client() as client:
            seen = {event.resource.id for event in client.read_events(filter=only, limit=50).events}
        if wanted <= seen:
            return
        time.sleep(0.5)
    pytest.fail(f"no heartbeat within {seconds:.0f} s from {sorted(wanted - seen)}:\n{stack.log('worker')}")


def _crash_lines(stack: Stack, run: str) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with stack.client() as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run])))
    return [entry.message for entry in logs if entry.message.startswith("This run crashed: ")]


def _open_task_runs(stack: Stack, run: str) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with stack.client() as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run])))
    return [t.name for t in tasks if t.state is None or not t.state.is_final()]


def _a_run_left_pending(stack: Stack) -> str:
    """A flow run whose process died while starting: Pending, never Running, no heartbeat."""
    from prefect import flow
    from prefect.states import Pending

    @flow(name="started-then-lost")
    def lost() -> None: ...

    with stack.client() as client:
        return str(client.create_flow_run(lost, state=Pending()).id)


def test_a_killed_worker_ends_its_runs_crashed_and_the_rerun_lands_each_day_once(stack: Stack) -> None:
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in (6, 5, 4, 3)]
    params = [
        f"--param from_date={days[0]}",
        f"--param to_date={days[-1]}",
        "--param days_per_run=2",
        "--param days_per_request=1",
        "--param max_concurrent_requests=1",
    ]
    # every export request stalls before answering: the runs are in the middle of their work when killed
    httpx.post(f"{SANDBOX}/_sandbox/faults", json=[{"kind": "slow_first_byte", "seconds": 300}] * 8)
    started = stack.run(
        f"export PREFECT_API_URL={SERVER_API}\n.venv/bin/prefect deployment run mixpanel-backfill/backfill "
        + " ".join(params)
    )
    assert started.returncode == 0, started.stdout + started.stderr
    parent = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)  # type: ignore[union-attr]

    stuck = stack.pending_run
    assert stuck is not None, "the operations path above did not get as far as `make deploy`"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pids = _flow_run_pids(stack)
        if len(pids) >= 3 and parent in pids and set(_states(stack, list(pids)).values()) == {"RUNNING"}:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the backfill did not fan out into two running children:\n{stack.log('worker')}")
    children = sorted(run for run in pids if run != parent)
    _wait_for_heartbeats(stack, [parent, *children])  # Crashed is "no heartbeat for 90 s after one"
    orphan = children[1]
    os.kill(_worker_pid(stack), signal.SIGKILL)
    for run in (parent, children[0]):
        os.kill(pids[run], signal.SIGKILL)
    killed = time.monotonic()

    # the orphan notices its worker is gone and stops by itself
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and Path(f"/proc/{pids[orphan]}").exists():
        time.sleep(1)
    status = Path(f"/proc/{pids[orphan]}/status")
    assert not status.exists() or "zombie" in status.read_text(), "the orphaned flow run kept running"

    # run again at once, as a user would: the killed runs, still shown Running until the automation
    # ends them, hold no lock on their days (its 90 s pass while the rerun works)
    httpx.post(f"{SANDBOX}/_sandbox/reset")  # no more stalls
    stack.processes.pop("worker").wait(timeout=30)
    stack.start("make worker", "worker")
    again = stack.run(
        f"export PREFECT_API_URL={SERVER_API}\n.venv/bin/prefect deployment run mixpanel-backfill/backfill "
        + " ".join(params)
        + " --watch"
    )
    assert again.returncode == 0, f"{again.stdout[-3000:]}{again.stderr[-3000:]}\n{stack.log('worker')}"

    # the killed ones are marked Crashed by the heartbeat automation (90 s without a heartbeat), the one
    # that never started by the Pending one (180 s)
    runs = [parent, *children, stuck]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and set(_states(stack, runs).values()) != {"CRASHED"}:
        time.sleep(1)
    assert _states(stack, runs) == dict.fromkeys(runs, "CRASHED")

    # each crashed run of the project says why in its own log, in one line, and leaves no task run open
    # (the crash-report deployment, run by an automation; the lost run is no flow of the project)
    ours = [parent, *children]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all(_crash_lines(stack, run) for run in ours):
        time.sleep(2)
    stack.timings["kill -9 to the crash line in each run's log"] = time.monotonic() - killed
    for run in ours:
        lines = _crash_lines(stack, run)
        assert len(lines) == 1, (run, lines, stack.log("worker"))
        assert "Run it again" in lines[0] or "run it again" in lines[0]
        assert not _open_task_runs(stack, run), run

    expected = httpx.get(
        f"{SANDBOX}/_sandbox/expected", params={"from_date": str(days[0]), "to_date": str(days[-1])}
    ).json()
    data = local_destination(stack.clone / "data")
    for day in days:
        manifest = data.manifest("mp_master_event", str(day))
        assert manifest is not None, day
        assert (manifest.rows, manifest.fingerprint) == (
            expected[str(day)]["rows"],
            expected[str(day)]["fingerprint"],
        )
