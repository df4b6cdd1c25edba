"""Child of ``bench.flow``: one measured run in a fresh interpreter (the parent reads its peak RSS).

``python -m bench.flow_worker --job JSON --result PATH``. Modes:

* ``flow``: the real ``mixpanel-events`` flow (``flows.events.events``) against the sandbox, with the
  Prefect server of ``PREFECT_API_URL``; the export task's events/s come from its task run's times
  as the server recorded them.
* ``pipeline``: the same request through ``tasks.pipeline.export.export_days`` alone, on the main thread, no
  flow run (what ``make bench`` measures, for the breakdown).
* ``idle-flow``: the flow machinery alone: imports, one flow run with one task that does nothing.

A sampler thread reads the process's RSS every 20 ms, so the report also tells when the peak came.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class Sampler(threading.Thread):
    """(seconds since start, RSS KiB, process CPU seconds of every thread) every ``every`` seconds."""

    def __init__(self, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.started_at = time.perf_counter()
        self.epoch = time.time()  # wall clock at start: where the Prefect server's task times fall
        self.samples: list[tuple[float, int, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.perf_counter() - self.started_at, rss_kib(), time.process_time()))
            self._halt.wait(self.every)

    def stop(self) -> list[tuple[float, int, float]]:
        self._halt.set()
        self.join()
        return self.samples

    def cpu_between(self, start: float, end: float) -> float:
        """Process CPU seconds spent between two wall-clock instants (epoch seconds), to a sample."""
        inside = [cpu for t, _, cpu in self.samples if start <= self.epoch + t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


def credentials(job: dict[str, Any]) -> Any:
    from blocks.mixpanel import MixpanelCredentials

    return MixpanelCredentials(
        project_id=1,
        service_account_username="sandbox-user",
        service_account_secret="sandbox-secret",
        api_base_url=job["url"],
        identity_mode=job.get("identity_mode", "simplified").replace("none", "simplified"),
    )


def committed_days(out: Path, job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each requested day's rows and fingerprint as committed in the local folder (its manifest)."""
    from datetime import date, timedelta

    from blocks.destinations.local import LocalDestination
    from tasks.schema import EVENTS_TABLE

    lake = LocalDestination(path=str(out)).connect(1)
    first, last = date.fromisoformat(job["from_date"]), date.fromisoformat(job["to_date"])
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    manifests = {day: lake.manifest(EVENTS_TABLE, day) for day in days}
    return {day: {"rows": m.rows, "fingerprint": m.fingerprint} for day, m in manifests.items() if m}


def block_bytes_knob() -> None:
    """``BENCH_BLOCK_BYTES``: the parse block size of every export, in both modes (set before the flow
    modules import ``export_days``)."""
    if not os.environ.get("BENCH_BLOCK_BYTES"):
        return
    import tasks.pipeline.export

    block = int(os.environ["BENCH_BLOCK_BYTES"])
    original = tasks.pipeline.export.export_days

    def with_block(client: Any, lake: Any, days: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
        return original(client, lake, days, dataclasses.replace(settings, block_bytes=block), *args, **kwargs)

    tasks.pipeline.export.export_days = with_block  # type: ignore[assignment]


def run_flow(job: dict[str, Any], out: Path, sampler: Sampler) -> dict[str, Any]:
    from datetime import date

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from blocks.destinations.local import LocalDestination
    from flows.events import events

    marks = {"imports_rss_kib": rss_kib()}
    # saved and passed by reference, as a deployment's run gets them: resolving a reference is where
    # Prefect imports every installed integration
    refs = [
        {"$ref": {"block_document_id": str(block.save(f"bench-{os.getpid()}-{i}", overwrite=True))}}
        for i, block in enumerate((credentials(job), LocalDestination(path=str(out))))
    ]
    state = events(
        *refs,
        from_date=date.fromisoformat(job["from_date"]),
        to_date=date.fromisoformat(job["to_date"]),
        days_per_request=job["days_per_request"],
        return_state=True,
    )
    rows = sum(int(r["rows"]) for r in state.result())
    committed = committed_days(out, job)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    exports = [t for t in task_runs if t.name.startswith("export") and t.start_time and t.end_time]
    task_seconds = sum((t.end_time - t.start_time).total_seconds() for t in exports)  # type: ignore[operator]
    # the process's CPU while the export tasks ran (their start and end as the server recorded them)
    task_cpu = sum(
        sampler.cpu_between(t.start_time.timestamp(), t.end_time.timestamp())  # type: ignore[union-attr]
        for t in exports
    )
    return marks | {
        "rows": rows,
        "days": committed,
        "task_seconds": task_seconds,
        "task_cpu_seconds": task_cpu,
        "tasks": len(exports),
    }


def run_pipeline(job: dict[str, Any], out: Path, sampler: Sampler) -> dict[str, Any]:
    from datetime import date, timedelta

    from tasks.lake.commit import Lake
    from tasks.lake.store import LocalStore
    from tasks.mixpanel.client import MixpanelClient
    from tasks.pipeline.export import ExportSettings, export_days

    marks = {"imports_rss_kib": rss_kib()}
    first, last = date.fromisoformat(job["from_date"]), date.fromisoformat(job["to_date"])
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    lake = Lake(LocalStore(out), 1)
    identity = job.get("identity_mode", "simplified")
    settings = ExportSettings(run_id="bench", identity_mode=identity if identity != "none" else None)
    # experiment knobs for the breakdown (bench/README.md): parse block size, frames buffered per request,
    # the dedup counter switched off
    if os.environ.get("BENCH_BUFFER_BYTES"):
        import tasks.lake.files

        budget = int(os.environ["BENCH_BUFFER_BYTES"])
        tasks.lake.files.PartitionBuffer.__init__.__defaults__ = (budget,)
    if os.environ.get("BENCH_NO_COUNTS"):
        import tasks.pipeline.counts

        tasks.pipeline.counts.DedupCounter.add = lambda self, frame: None  # type: ignore[method-assign]
    if os.environ.get("BENCH_SPILL_ROWS"):
        import tasks.pipeline.counts

        tasks.pipeline.counts.DedupCounter.__init__.__defaults__ = (None, int(os.environ["BENCH_SPILL_ROWS"]))
    if os.environ.get("BENCH_CLOSE_EACH"):
        import tasks.lake.files

        write = tasks.lake.files.RollingFiles.write

        def write_and_close(self: tasks.lake.files.RollingFiles, frame: Any) -> None:
            write(self, frame)
            self._close_current()

        tasks.lake.files.RollingFiles.write = write_and_close  # type: ignore[method-assign]
    if os.environ.get("BENCH_PREPARSED"):
        # the export without its parsing: the days' blocks parsed before the clock, handed on as they are
        import glob

        import tasks.pipeline.export
        from tasks.pipeline.parse import StreamParser

        blocks = []
        for day in days:
            (path,) = glob.glob(f"{job['cache_dir']}/*/{day}.jsonl")
            parser = StreamParser()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    blocks.extend(parser.feed(chunk))
            blocks.extend(parser.finish())

        class Preparsed:
            def __init__(self, *args: Any) -> None:
                self.lines = 0

            def feed(self, data: bytes) -> Any:
                return iter(())

            def finish(self) -> Any:
                return iter(blocks)

        tasks.pipeline.export.StreamParser = Preparsed  # type: ignore[misc,assignment]
    started, cpu = time.perf_counter(), time.process_time()
    with MixpanelClient(credentials(job).api_settings()) as client:
        results = export_days(client, lake, days, settings)
    return marks | {
        "rows": sum(r.rows for r in results),
        "days": committed_days(out, job),
        "task_seconds": time.perf_counter() - started,
        "task_cpu_seconds": time.process_time() - cpu,
    }


def run_idle_flow(job: dict[str, Any], out: Path, sampler: Sampler) -> dict[str, Any]:
    from prefect import flow, task

    import flows.events  # noqa: F401 - the same imports as the flow run

    marks = {"imports_rss_kib": rss_kib()}

    @task
    def nothing() -> int:
        return 0

    @flow(name="bench-idle")
    def idle() -> int:
        return nothing()

    idle()
    return marks | {"rows": 0, "task_seconds": 0.0}


MODES = {
    "flow": run_flow,
    "pipeline": run_pipeline,
    "idle-flow": run_idle_flow,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flow_worker")
    parser.add_argument("--job", required=True)
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args(argv)
    job = json.loads(args.job)
    block_bytes_knob()
    if os.environ.get("BENCH_SWITCH_SECONDS"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_SECONDS"]))
    out = Path(job["workdir"])
    out.mkdir(parents=True, exist_ok=True)
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    try:
        report = MODES[job["mode"]](job, out, sampler)
        code = 0
    except Exception as exc:  # reported to the parent, which stops the benchmark
        traceback.print_exc()
        report, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    samples = sampler.stop()
    peak_at, peak, _ = max(samples, key=lambda s: s[1]) if samples else (0.0, 0, 0.0)
    report |= {
        "seconds": time.perf_counter() - started,
        "self_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "sampled_peak_kib": peak,
        "sampled_peak_at": round(peak_at, 2),
        "timeline": [(round(t, 2), k) for t, k, _ in samples[:: max(1, len(samples) // 200)]],
    }
    args.result.write_text(json.dumps(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
