"""`python -m bench.events`: the raw-event export pipeline against the naive and ijson baselines.

All paths read the same day, served by the same sandbox process from its disk cache (pinned to one CPU);
each path runs in its own fresh child pinned to the other CPU, so times are single-core and peak RSS is
per path. Results go to ``<out>/events.json`` and a markdown summary to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import EXIT_BACKEND_ABORTED
from bench.harness import ROOT, ChildRun, DayData, SandboxProcess, cpu_plan, run_child

# A fixed past day: the cache file name stays the same from run to run, so data is generated once.
DAY = date(2024, 3, 1)
PATHS = ("drain", "pipeline", "naive", "ijson")
MIB = 1 << 20
# Throughput in decimal MB (10^6 bytes), memory in MiB (what ps and ru_maxrss users expect).
MB = 1_000_000

# The project's acceptance targets.
MIN_EVENTS_PER_S = 100_000
MIN_SPEEDUP = 3.0
MAX_PEAK_RSS_MIB = 500.0
MAX_FLAT_DRIFT = 0.10


@dataclass
class Measurement:
    path: str
    events: int
    seconds: float
    cpu_seconds: float
    body_bytes: int
    peak_rss_mib: float
    import_rss_mib: float
    files: int
    output_mib: float
    note: str = ""
    # Every run's seconds when --repeat > 1; the row shows the median run, peak RSS is the worst run's.
    seconds_all: list[float] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.body_bytes / self.seconds / MB

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"events_per_s": round(self.events_per_s), "mb_per_s": round(self.mb_per_s, 1)}


class BenchFailed(SystemExit):
    """A path produced wrong data or crashed: the numbers would be meaningless, so stop."""


class Bench:
    def __init__(self, out: Path, scratch: Path) -> None:
        self.out = out
        self.scratch = scratch
        self.client_cpu, self.server_cpu = cpu_plan()
        self.log = out / "bench.log"
        # The client's rate budget lives in SQLite under MP_PIPELINES_STATE_DIR: a private one per run.
        self.env = os.environ | {"MP_PIPELINES_STATE_DIR": str(scratch / "state")}

    def sandbox(self, events: int) -> SandboxProcess:
        return SandboxProcess(events, self.out / "cache", DAY, self.server_cpu, self.log)

    def run(self, path: str, sandbox: SandboxProcess, data: DayData, backend: str = "yajl2_c") -> ChildRun:
        workdir = self.scratch / f"{path}-{data.rows}"
        job = {
            "path": path,
            "url": sandbox.url,
            "day": DAY.isoformat(),
            "expected_rows": data.rows,
            "expected_fingerprint": data.fingerprint,
            "workdir": str(workdir),
            "ijson_backend": backend,
        }
        try:
            return run_child(job, self.client_cpu, self.scratch / "result.json", self.env, self.log)
        finally:
            # Output files are only measured, never kept: a 3M-event day would otherwise pile up on disk.
            shutil.rmtree(workdir, ignore_errors=True)

    def measure(self, path: str, sandbox: SandboxProcess, data: DayData) -> Measurement:
        run = self.run(path, sandbox, data)
        note = ""
        if path == "ijson" and run.exit_code == EXIT_BACKEND_ABORTED:
            # Reported, then measured with the backend that can read the data.
            note = f"yajl2_c aborted ({run.outcome.get('error')}); measured with the pure-python backend. "
            run = self.run(path, sandbox, data, backend="python")
        if run.exit_code != 0:
            reason = run.outcome.get("error") or f"exit code {run.exit_code}"
            raise BenchFailed(f"{path} at {data.rows} events failed: {reason}; see {self.log}")
        o = run.outcome
        if o["body_bytes"] is not None and o["body_bytes"] != data.body_bytes:
            raise BenchFailed(
                f"{path} received {o['body_bytes']} bytes, the sandbox serves {data.body_bytes}"
            )
        return Measurement(
            path=path,
            events=o["rows"],
            seconds=o["seconds"],
            cpu_seconds=o["cpu_seconds"],
            body_bytes=data.body_bytes,
            peak_rss_mib=run.peak_rss_kib / 1024,
            import_rss_mib=o["import_rss_kib"] / 1024,
            files=o["files"],
            output_mib=o["output_bytes"] / MIB,
            note=(note + o["note"]).strip(),
        )

    def measure_all(self, events: int, paths: list[str], repeat: int = 1) -> list[Measurement]:
        """Every path on one day of ``events`` events, from one sandbox process."""
        runs: dict[str, list[Measurement]] = {path: [] for path in paths}
        with self.sandbox(events) as sandbox:
            data = sandbox.day_data()
            # Untimed first read: pulls the cached day into the page cache so no path pays for the disk.
            self.run("drain", sandbox, data)
            # Round-robin, so a slow spell on a shared host hits every path rather than one.
            for _ in range(repeat):
                for path in paths:
                    runs[path].append(self.measure(path, sandbox, data))
        return [median_run(runs[path]) for path in paths]


def median_run(runs: list[Measurement]) -> Measurement:
    ordered = sorted(runs, key=lambda m: m.seconds)
    middle = ordered[(len(ordered) - 1) // 2]
    return replace(
        middle,
        peak_rss_mib=max(m.peak_rss_mib for m in runs),
        seconds_all=[round(m.seconds, 3) for m in runs],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events in the day of the comparison")
    p.add_argument(
        "--flat-events",
        type=int,
        default=3_000_000,
        help="pipeline-only day size for the flatness check; 0 skips",
    )
    p.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated subset of {','.join(PATHS)} (drain = HTTP only, the ceiling)",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per path (round-robin); the median is reported"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = p.parse_args(argv)
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown or not args.paths:
        p.error(f"--paths: unknown {unknown}, choose from {','.join(PATHS)}")
    if args.events <= 0 or args.flat_events < 0 or args.repeat < 1:
        p.error("--events must be > 0, --flat-events >= 0 and --repeat >= 1")
    return args


def machine(bench: Bench) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().split()
    versions = {
        pkg: importlib.metadata.version(pkg) for pkg in ("polars", "pyarrow", "msgspec", "ijson", "httpx")
    }
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / MIB, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "client_cpu": bench.client_cpu,
        "sandbox_cpu": bench.server_cpu,
        "versions": versions,
    }


def flatness(small: Measurement, large: Measurement) -> dict[str, Any]:
    return {
        "small_events": small.events,
        "small_peak_rss_mib": round(small.peak_rss_mib, 1),
        "large_events": large.events,
        "large_peak_rss_mib": round(large.peak_rss_mib, 1),
        "relative_difference": (large.peak_rss_mib - small.peak_rss_mib) / small.peak_rss_mib,
        "large_events_per_s": round(large.events_per_s),
    }


def targets(by_path: dict[str, Measurement], flat: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The acceptance targets that this run measured, each with PASS or MISS."""
    rows: list[dict[str, Any]] = []
    pipe, naive = by_path.get("pipeline"), by_path.get("naive")
    if pipe is not None:
        rate, rss = pipe.events_per_s, pipe.peak_rss_mib
        rows.append(
            _target(
                "pipeline events/s",
                f">= {MIN_EVENTS_PER_S:,}",
                rate,
                f"{rate:,.0f}",
                rate >= MIN_EVENTS_PER_S,
            )
        )
        rows.append(
            _target(
                "pipeline peak RSS",
                f"< {MAX_PEAK_RSS_MIB:.0f} MiB",
                rss,
                f"{rss:.0f} MiB",
                rss < MAX_PEAK_RSS_MIB,
            )
        )
    if pipe is not None and naive is not None:
        speedup = pipe.events_per_s / naive.events_per_s
        rows.append(
            _target(
                "pipeline / naive",
                f">= {MIN_SPEEDUP:.0f}x",
                speedup,
                f"{speedup:.2f}x",
                speedup >= MIN_SPEEDUP,
            )
        )
    if flat is not None:
        drift, rss = flat["relative_difference"], flat["large_peak_rss_mib"]
        goal = f"within ±{MAX_FLAT_DRIFT:.0%}"
        rows.append(
            _target(
                "peak RSS drift, small→large day", goal, drift, f"{drift:+.1%}", abs(drift) <= MAX_FLAT_DRIFT
            )
        )
        rows.append(
            _target(
                "pipeline peak RSS, large day",
                f"< {MAX_PEAK_RSS_MIB:.0f} MiB",
                rss,
                f"{rss:.0f} MiB",
                rss < MAX_PEAK_RSS_MIB,
            )
        )
    return rows


def _target(name: str, goal: str, measured: float, shown: str, ok: bool) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": round(measured, 4), "shown": shown, "pass": ok}


def _header(report: dict[str, Any]) -> str:
    m, repeat = report["machine"], report["settings"]["repeat"]
    runs = f"; median of {repeat} runs per path" if repeat > 1 else ""
    return (
        f"Events benchmark: one day ({report['day']}), {m['cpu']}, {m['cpus']} CPUs; "
        f"client pinned to CPU {m['client_cpu']}, sandbox to CPU {m['sandbox_cpu']}{runs}."
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        _header(report),
        "",
        "| path | events | seconds | events/s | MB/s | peak RSS MiB | RSS after imports MiB | CPU s | files | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        note = r["note"]
        if len(r["seconds_all"]) > 1:
            note = f"runs {' / '.join(f'{x:.2f}' for x in r['seconds_all'])} s. {note}".strip()
        lines.append(
            f"| {r['path']} | {r['events']:,} | {r['seconds']:.2f} | {r['events_per_s']:,} | {r['mb_per_s']:.1f} "
            f"| {r['peak_rss_mib']:.0f} | {r['import_rss_mib']:.0f} | {r['cpu_seconds']:.2f} | {r['files']} | {note} |"
        )
    if report.get("pipeline_over_naive") is not None:
        lines += ["", f"pipeline / naive (events/s): {report['pipeline_over_naive']:.2f}x"]
    if report.get("pipeline_over_ijson") is not None:
        lines += [f"pipeline / ijson (events/s): {report['pipeline_over_ijson']:.2f}x"]
    flat = report.get("flatness")
    if flat is not None:
        lines += [
            "",
            f"Memory flatness (pipeline): peak RSS {flat['small_peak_rss_mib']:.0f} MiB at {flat['small_events']:,} "
            f"events, {flat['large_peak_rss_mib']:.0f} MiB at {flat['large_events']:,} events "
            f"({flat['relative_difference']:+.1%}); {flat['large_events_per_s']:,} events/s at the large day.",
        ]
    lines += ["", "| target | goal | measured | result |", "|---|---|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['goal']} | {t['shown']} | {'PASS' if t['pass'] else 'MISS'} |")
    return "\n".join(lines)


def ratio(by_path: dict[str, Measurement], a: str, b: str) -> float | None:
    if a in by_path and b in by_path:
        return by_path[a].events_per_s / by_path[b].events_per_s
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=out) as scratch:
        bench = Bench(out, Path(scratch))
        bench.log.write_text("")  # one log per run: children and sandbox append to it
        # The flatness check needs the pipeline at the comparison size too.
        paths = list(args.paths)
        if args.flat_events and "pipeline" not in paths:
            paths.append("pipeline")
        results = bench.measure_all(args.events, paths, args.repeat)
        by_path = {r.path: r for r in results}
        flat = None
        if args.flat_events:
            (large,) = bench.measure_all(args.flat_events, ["pipeline"], args.repeat)
            flat = flatness(by_path["pipeline"], large)
        report = {
            "day": DAY.isoformat(),
            "machine": machine(bench),
            "settings": {
                "events": args.events,
                "flat_events": args.flat_events,
                "paths": paths,
                "repeat": args.repeat,
            },
            "results": [r.as_dict() for r in results],
            "pipeline_over_naive": ratio(by_path, "pipeline", "naive"),
            "pipeline_over_ijson": ratio(by_path, "pipeline", "ijson"),
            "flatness": flat,
            "targets": targets(by_path, flat),
        }
    (out / "events.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwritten: {out / 'events.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
