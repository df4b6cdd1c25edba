"""Child entry point: `python -m bench.workers --job JSON --result PATH` measures one path, alone.

A fresh interpreter per measurement keeps one path's heap out of another's peak RSS (the parent reads
that peak with ``os.wait4``). Each path's module is imported only in its own child, and the child
reports its RSS right after that import, so library weight can be told apart from the export's own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench.common import EXIT_BACKEND_ABORTED, EXIT_MISMATCH, BackendAborted, Job, Mismatch, Outcome

Runner = Callable[[Job, Path], Outcome]

# path -> (module, function); the pipeline's module pulls in prefect, which the baselines must not carry.
RUNNERS = {
    "drain": ("bench.baselines", "run_drain"),
    "pipeline": ("bench.pipeline_run", "run"),
    "naive": ("bench.baselines", "run_naive"),
    "ijson": ("bench.baselines", "run_ijson"),
}


def current_rss_kib() -> int:
    # /proc/self/statm counts pages; this is RSS now (ru_maxrss would be the peak so far).
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def load(path: str) -> Runner:
    module, function = RUNNERS[path]
    runner: Runner = getattr(importlib.import_module(module), function)
    return runner


def measure(job: Job) -> Outcome:
    """Times one path from opening the request to the last file closed; imports are not counted."""
    out = Path(job.workdir)
    out.mkdir(parents=True, exist_ok=True)
    runner = load(job.path)
    import_rss = current_rss_kib()
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = runner(job, out)
    outcome.seconds = time.perf_counter() - wall
    # process_time counts every thread (polars and pyarrow work in their own pools).
    outcome.cpu_seconds = time.process_time() - cpu
    outcome.import_rss_kib = import_rss
    outcome.self_peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    parser.add_argument("--job", required=True, help="a bench.common.Job as JSON")
    parser.add_argument("--result", required=True, type=Path, help="where to write the Outcome as JSON")
    args = parser.parse_args(argv)
    job = Job(**json.loads(args.job))
    code = 0
    try:
        outcome = measure(job)
    except (Mismatch, BackendAborted) as exc:
        traceback.print_exc()
        code = EXIT_MISMATCH if isinstance(exc, Mismatch) else EXIT_BACKEND_ABORTED
        outcome = Outcome(error=str(exc))
    args.result.write_text(json.dumps(asdict(outcome)))
    return code


if __name__ == "__main__":
    sys.exit(main())
