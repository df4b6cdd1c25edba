"""One store server per test run, shared by every pytest-xdist worker.

moto, fakesnow and Azurite each cost 2-4 s of CPU to start, and every worker that ran a test of theirs
used to start its own. Now the first worker that needs one starts it, under a file lock, and writes
where it listens into the run's shared folder; the other workers read that. The process that owns the
run (xdist's controller, or pytest itself without ``-n``) made the folder and stops every server
recorded in it when the run ends (``start_run``/``end_run``, called from tests/conftest.py), whichever
worker started it and whenever that worker ended.

Tests keep out of each other's way on a shared server as they did on a per-worker one: each makes its
own bucket, container or database. Fault injection stays per worker: each worker puts its own
``FaultProxy`` in front of the shared server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RUN_DIR = "MP_TESTS_SHARED_SERVERS"  # inherited by the workers, which xdist starts after configure
_started: list[subprocess.Popen[bytes]] = []  # kept so the worker does not reap or warn about them


def start_run() -> None:
    """In the process that owns the run: a folder for the shared servers' addresses."""
    os.environ[RUN_DIR] = tempfile.mkdtemp(prefix="mp-test-servers-")


def end_run() -> None:
    """Stop every shared server of this run (SIGTERM, SIGKILL after 10 s) and remove its folder."""
    folder = os.environ.pop(RUN_DIR, None)
    if folder is None:
        return
    pids = [json.loads(info.read_text())["pid"] for info in Path(folder).glob("*.json")]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


def shared_server(
    name: str, start: Callable[[Path], tuple[subprocess.Popen[bytes], dict[str, Any]]]
) -> dict[str, Any]:
    """What ``start`` returned for the run's ``name`` server, starting it if no worker has yet.

    ``start(workdir)`` starts the server, waits until it serves, and returns its process and what
    clients need (JSON: ports, keys). A server that died since is started again.
    """
    folder = Path(os.environ[RUN_DIR])
    record = folder / f"{name}.json"
    with _locked(folder / f"{name}.lock"):
        if record.exists():
            info: dict[str, Any] = json.loads(record.read_text())
            if _alive(info["pid"]):
                return info
        workdir = folder / name
        workdir.mkdir(exist_ok=True)
        process, info = start(workdir)
        _started.append(process)
        info["pid"] = process.pid
        record.write_text(json.dumps(info))
        return info


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    # a server started by a worker that has ended is nobody's child: it never lingers as a zombie
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
