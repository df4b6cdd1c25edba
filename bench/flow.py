"""`python -m bench.flow` (`make bench-flow`): the real `mixpanel-events` flow, measured as users run it.

A Prefect server (`prefect server start`, its own process and SQLite home) and a sandbox (rate limits
off, days served from its disk cache; gzip on: each request's body gzipped once and served from disk, as
a CDN would; gzip off: plain) run beside each measured run: a fresh Python process, free to use every
CPU, that runs the flow for one export request of 1, 3 or 7 days. The parent reads that process's own
peak RSS and CPU time with `os.wait4` (the servers are not counted); the export task's events/s come
from its task run's start and end as the Prefect server recorded them, its CPU from the process's CPU
clock sampled over that span. After each run, `curl --compressed` drains the same body: the ceiling.
`--modes pipeline,idle-flow` adds the runs the memory breakdown compares with (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import nullcontext
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.common import SECRET, USERNAME
from bench.harness import ROOT, SandboxProcess, _auth_header, pinned, run_child

FIRST_DAY = date(2024, 3, 1)  # fixed past days: the sandbox's cache files are generated once
MIB = 1024  # KiB per MiB
MAX_FLOW_RSS_MIB = 500e6 / 2**20  # issue 26: under 500 MB (476.8 MiB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrefectServer:
    """`prefect server start` in its own session (so the whole group can be stopped), private home."""

    def __init__(self, home: Path, cpu: int | None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = os.environ | {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_API_DATABASE_TIMEOUT": "60",
        }
        self.env.pop("PREFECT_API_URL", None)
        self.cpu, self.log = cpu, log
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrefectServer:
        with open(self.log, "ab") as err:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=err,
                stderr=err,
                start_new_session=True,
                preexec_fn=pinned(self.cpu),
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"the Prefect server did not start; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        pgid = os.getpgid(self._proc.pid)
        os.killpg(pgid, 15)
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, 9)
            self._proc.wait()
        self._proc = None


def expected_days(sandbox: SandboxProcess, first: date, last: date) -> dict[str, dict[str, Any]]:
    """The sandbox's rows and fingerprint of each day it serves from ``first`` to ``last``."""
    query = urllib.parse.urlencode({"from_date": first, "to_date": last})
    request = urllib.request.Request(f"{sandbox.url}/_sandbox/expected?{query}", headers=_auth_header())
    with urllib.request.urlopen(request, timeout=120) as response:
        served = json.load(response)
    return {day: {"rows": int(v["rows"]), "fingerprint": str(v["fingerprint"])} for day, v in served.items()}


def environment(extras: str, out: Path, log: Path) -> str:
    """The Python of an environment holding the locked dependencies with ``extras`` (`all`: this one).

    A worker carries the integrations its extras install, and Prefect imports every installed one
    the first time a run resolves a block: so the flow is measured as a user who installed what
    their destination needs runs it (`make setup EXTRAS=...`).
    """
    if extras == "all":
        return sys.executable
    chosen = [e for e in extras.split("+") if e and e != "none"]
    venv = out / f"venv-{extras}"
    flags = [arg for extra in chosen for arg in ("--extra", extra)]
    with open(log, "ab") as err:
        subprocess.run(
            [
                str(ROOT / ".tools" / "bin" / "uv"),
                "sync",
                "--frozen",
                "--no-dev",
                "--python",
                sys.executable,
                *flags,
            ],
            cwd=ROOT,
            env=os.environ | {"UV_PROJECT_ENVIRONMENT": str(venv)},
            stdout=err,
            stderr=err,
            check=True,
        )
    return str(venv / "bin" / "python")


def run_one(
    job: dict[str, Any], env: dict[str, str], log: Path, scratch: Path, python: str
) -> dict[str, Any]:
    """One flow run in its own process on every CPU; its peak RSS and CPU alone, not the servers'."""
    child = run_child(job, None, scratch / "result.json", env, log, module="bench.flow_worker", python=python)
    return dict(child.outcome) | {
        "exit_code": child.exit_code,
        "peak_rss_mib": round(child.peak_rss_kib / MIB, 1),
        "cpu_seconds": round(child.cpu_seconds, 2),
    }


def drain(sandbox: SandboxProcess, first: date, last: date, log: Path) -> dict[str, float]:
    """`curl --compressed` reading the same request's body and throwing it away: the machine's ceiling
    for this body (HTTP, and inflating when it is gzipped), its wall and CPU time from wait4."""
    query = urllib.parse.urlencode({"from_date": first, "to_date": last, "project_id": 1})
    argv = ["curl", "--compressed", "--fail", "-s", "-o", "/dev/null", "-u", f"{USERNAME}:{SECRET}"]
    with open(log, "ab") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([*argv, f"{sandbox.url}/api/2.0/export?{query}"], stdout=err, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"curl failed draining {first}..{last}; see {log}")
    return {"drain_seconds": seconds, "drain_cpu_seconds": usage.ru_utime + usage.ru_stime}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__)
    parser.add_argument("--events-per-day", type=int, default=300_000)
    parser.add_argument("--days", default="1,3,7", help="days per request, one run each")
    parser.add_argument("--gzip", default="on,off", help="on (a cached gzip body), off (plain), or both")
    parser.add_argument("--modes", default="flow", help="flow, pipeline, idle-flow (comma-separated)")
    parser.add_argument("--identity-mode", default="simplified", help="simplified, original or none")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the table shows medians")
    parser.add_argument(
        "--extras",
        default="none",
        help="the extras installed where the flow runs: none (local folder), s3, s3+snowflake, ..., all",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--env", action="append", default=[], help="K=V for the measured process (experiments)"
    )
    args = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.env)
    spans = [int(d) for d in args.days.split(",")]
    modes = args.modes.split(",")
    gzips = [g == "on" for g in args.gzip.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "bench-flow.log"
    last_day = FIRST_DAY + timedelta(days=max(spans) - 1)
    rows: list[dict[str, Any]] = []
    python = environment(args.extras, args.out, log)
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        scratch = Path(tmp)
        needs_server = any(mode != "pipeline" for mode in modes)
        with PrefectServer(scratch / "prefect-home", None, log) if needs_server else nullcontext() as server:
            env = (
                os.environ
                | extra_env
                | {
                    "PREFECT_API_URL": server.url if server else "",
                    "PREFECT_HOME": str(scratch / "prefect-home"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "MP_PIPELINES_STATE_DIR": str(scratch / "state"),
                }
            )
            for gzip in gzips:
                with SandboxProcess(
                    args.events_per_day, args.out / "cache", FIRST_DAY, None, log, last_day, gzip=gzip
                ) as sandbox:
                    for span in spans:
                        last = FIRST_DAY + timedelta(days=span - 1)
                        drain(sandbox, FIRST_DAY, last, log)  # untimed: the gzip body is made, pages cached
                    for _ in range(args.repeat):
                        for mode in modes:
                            for span in spans if mode != "idle-flow" else [0]:
                                report = measure(mode, span, gzip, sandbox, args, env, log, scratch, python)
                                if report is None:
                                    return 1
                                rows.append(report)
                                print(summary_line(report), flush=True)
    (args.out / "flow.json").write_text(
        json.dumps({"events_per_day": args.events_per_day, "runs": rows}, indent=1)
    )
    print()
    print(table(medians(rows), args.events_per_day, args.repeat))
    worst = max((r["peak_rss_mib"] for r in rows if r["mode"] == "flow"), default=0)
    if worst >= MAX_FLOW_RSS_MIB:
        print(
            f"\nthe flow process peaked at {worst:.0f} MiB, over the 500 MB ({MAX_FLOW_RSS_MIB:.1f} MiB) target: see "
            "bench/README.md, 'Where the flow process's memory goes' (exit code 2)",
            file=sys.stderr,
        )
        return 2
    return 0


def measure(
    mode: str,
    span: int,
    gzip: bool,
    sandbox: SandboxProcess,
    args: argparse.Namespace,
    env: dict[str, str],
    log: Path,
    scratch: Path,
    python: str,
) -> dict[str, Any] | None:
    """One run of ``mode`` and, beside it, a drain of the same body; None if the run failed or miscounted."""
    last = FIRST_DAY + timedelta(days=max(span, 1) - 1)
    workdir = scratch / f"data-{mode}-{span}"
    job = {
        "mode": mode,
        "url": sandbox.url,
        "from_date": FIRST_DAY.isoformat(),
        "to_date": last.isoformat(),
        "days_per_request": max(span, 1),
        "identity_mode": args.identity_mode,
        "workdir": str(workdir),
        "cache_dir": str(args.out / "cache"),  # for BENCH_PREPARSED
    }
    report = run_one(job, env, log, scratch, python)
    shutil.rmtree(workdir, ignore_errors=True)
    if report["exit_code"] != 0 or "error" in report:
        print(f"{mode} {span} day(s) failed: {report.get('error')}; see {log}", file=sys.stderr)
        return None
    served = expected_days(sandbox, FIRST_DAY, last) if span else {}
    want = sum(day["rows"] for day in served.values())
    if report["rows"] != want or report.get("days", {}) != served:
        print(
            f"{mode}: {report['rows']} rows, the sandbox served {want}; committed per day "
            f"{report.get('days')}, served {served}",
            file=sys.stderr,
        )
        return None
    drained = drain(sandbox, FIRST_DAY, last, log) if span else {}
    return (
        report
        | drained
        | {
            "mode": mode,
            "gzip": "on" if gzip else "off",
            "extras": args.extras,
            "days_per_request": span,
            "events": want,
        }
    )


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, gzip, days): the median of each number over the repeats."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["gzip"], r["days_per_request"]), []).append(r)
    out = []
    for runs in groups.values():
        merged = dict(runs[0])
        for key, value in runs[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                merged[key] = statistics.median(r.get(key, 0) for r in runs)
        out.append(merged)
    return out


def rates(r: dict[str, Any]) -> dict[str, float]:
    """events/s, CPU µs per event and cores used (CPU / wall) of the export, and of the drain beside it."""
    seconds, cpu, events = r.get("task_seconds") or 0, r.get("task_cpu_seconds") or 0, r["events"] or 1
    drain_s = r.get("drain_seconds") or 0
    return {
        "rate": events / seconds if seconds else 0,
        "us": cpu / events * 1e6,
        "cores": cpu / seconds if seconds else 0,
        "drain_rate": events / drain_s if drain_s else 0,
        "drain_us": (r.get("drain_cpu_seconds") or 0) / events * 1e6,
    }


def summary_line(r: dict[str, Any]) -> str:
    x = rates(r)
    return (
        f"{r['mode']:<10} gzip {r['gzip']:<3} [{r['extras']}] {r['days_per_request']} day(s) {r['events']:>9,} events: "
        f"peak RSS {r['peak_rss_mib']} MiB (imports {r.get('imports_rss_kib', 0) / MIB:.0f}), "
        f"export {r.get('task_seconds', 0):.1f} s = {x['rate']:,.0f} events/s, {x['us']:.1f} µs CPU/event, "
        f"{x['cores']:.2f} cores; process CPU {r['cpu_seconds']:.1f} s of {r['seconds']:.1f} s; "
        f"drain {r.get('drain_seconds', 0):.1f} s = {x['drain_rate']:,.0f} events/s"
    )


def table(rows: list[dict[str, Any]], per_day: int, repeat: int) -> str:
    lines = [
        f"{per_day:,} events per day; medians of {repeat} run(s); the measured process alone (wait4), on every CPU",
        "",
        "| run | gzip | extras | days per request | events | export task s | events/s | export CPU s | CPU µs/event "
        "| cores used | process CPU s | peak RSS MiB | RSS after imports MiB | drain s | drain events/s "
        "| drain CPU µs/event | export / drain |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        x = rates(r)
        ratio = f"{x['rate'] / x['drain_rate']:.2f}" if x["drain_rate"] else "-"
        lines.append(
            f"| {r['mode']} | {r['gzip']} | {r['extras']} | {r['days_per_request']} | {r['events']:,} | "
            f"{r.get('task_seconds', 0):.1f} | {x['rate']:,.0f} | {r.get('task_cpu_seconds', 0):.1f} | "
            f"{x['us']:.1f} | {x['cores']:.2f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r.get('imports_rss_kib', 0) / MIB:.0f} | {r.get('drain_seconds', 0):.2f} | {x['drain_rate']:,.0f} | "
            f"{x['drain_us']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
