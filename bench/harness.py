"""Process plumbing for the benchmark: the sandbox server and the measured children, each on its own CPU.

Deliberately light on imports (no polars, pyarrow or prefect): children are forked from this process,
and whatever the parent has resident is briefly counted in a child's peak RSS before it execs.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.common import SECRET, USERNAME
from sandbox.__main__ import build_parser, config_from_args
from sandbox.cache import day_paths

ROOT = Path(__file__).resolve().parent.parent
READY = "sandbox listening on "
# Generating a 3M-event day takes ~40 s on the reference machine; leave room for slower ones.
READY_TIMEOUT_SECONDS = 1800.0


def cpu_plan() -> tuple[int, int]:
    """(client CPU, sandbox CPU): distinct when the machine has two, so the server never steals client time."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[1] if len(cpus) > 1 else cpus[0]


def pinned(cpu: int | None) -> Any:
    """Pin the child to ``cpu``; None leaves it every CPU (a measured process that uses them all)."""

    # Runs in the forked child before exec, so the new interpreter and all its threads inherit the mask.
    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return pin


@dataclass(frozen=True)
class DayData:
    rows: int
    fingerprint: str
    body_bytes: int


class SandboxProcess:
    """`python -m sandbox` serving one fixed day size from a disk cache, rate limits off, pinned to a CPU."""

    def __init__(
        self,
        events_per_day: int,
        cache_dir: Path,
        day: date,
        cpu: int | None,
        log: Path,
        last: date | None = None,
        gzip: bool = False,
    ) -> None:
        """Serves ``day`` (and every day up to ``last``, prewarmed too, for multi-day requests); ``gzip``:
        each date range's body gzipped once and served from the cache (`--gzip-cached`), else plain."""
        self.day = day
        self.cpu = cpu
        self.log = log
        self.argv = [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--gzip-cached" if gzip else "--no-gzip",
            "--cache-dir",
            str(cache_dir),
            "--events-per-day",
            str(events_per_day),
            # Generate (first run) or find (later runs) the day before serving, so no timed request waits for it.
            "--prewarm",
            f"{day}:{last or day}",
            "--max-per-second",
            "0",
            "--max-concurrent",
            "0",
            "--max-per-hour",
            "0",
        ]
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox", *self.argv],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                preexec_fn=pinned(self.cpu),
            )
        self.url = self._wait_ready()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()  # the sandbox stops cleanly on SIGTERM
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    def _wait_ready(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._proc.stdout], [], [], 1.0)
            if not ready:
                if self._proc.poll() is not None:
                    break
                continue
            line = self._proc.stdout.readline()
            if not line:
                break
            if line.startswith(READY):
                return line[len(READY) :].strip()
        self.stop()
        raise RuntimeError(f"the sandbox did not start; see {self.log}")

    def day_data(self) -> DayData:
        """What a correct export of the day must produce, and the exact size of the served body."""
        query = urllib.parse.urlencode({"from_date": self.day, "to_date": self.day})
        request = urllib.request.Request(f"{self.url}/_sandbox/expected?{query}", headers=_auth_header())
        with urllib.request.urlopen(request, timeout=60) as response:
            expected = json.load(response)[self.day.isoformat()]
        # The cache file holds exactly the served bytes (--no-gzip): the body size without counting it.
        body, _ = day_paths(config_from_args(build_parser().parse_args(self.argv)), self.day)
        return DayData(int(expected["rows"]), str(expected["fingerprint"]), body.stat().st_size)


def _auth_header() -> dict[str, str]:
    token = base64.b64encode(f"{USERNAME}:{SECRET}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass(frozen=True)
class ChildRun:
    exit_code: int
    peak_rss_kib: int
    outcome: dict[str, Any]
    cpu_seconds: float = 0.0  # user + system time of the child's every thread (wait4)


def run_child(
    job: dict[str, Any],
    cpu: int | None,
    result: Path,
    env: dict[str, str],
    log: Path,
    module: str = "bench.workers",
    python: str = sys.executable,
) -> ChildRun:
    """Run one job of ``module`` in a fresh interpreter pinned to ``cpu`` (None: every CPU); its own
    peak RSS and CPU time via wait4."""
    result.unlink(missing_ok=True)
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [python, "-m", module, "--job", json.dumps(job), "--result", str(result)],
            cwd=ROOT,
            env=env,
            stdout=err,
            stderr=err,
            preexec_fn=pinned(cpu),
        )
        # wait4 on this pid alone: RUSAGE_CHILDREN would fold in earlier children and the sandbox.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    outcome = json.loads(result.read_text()) if result.exists() else {}
    return ChildRun(proc.returncode, usage.ru_maxrss, outcome, usage.ru_utime + usage.ru_stime)
