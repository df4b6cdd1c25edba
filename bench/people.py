"""`python -m bench.people`: profiles/s and peak RSS of the people pipeline on N sandbox profiles.

The sandbox runs in its own process (CPU 1), generating profiles per page; the pipeline runs in a
fresh child process (CPU 0) whose peak RSS is its own. Query limits are lifted on both sides so the
run measures the pipeline, not Mixpanel's 60 pages/hour.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from bench.harness import ROOT, pinned

READY = "sandbox listening on "

CHILD = """
import json, os, resource, sys, time
from pathlib import Path
from blocks.mixpanel import MixpanelCredentials
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.people import EngageQuery, export_people
from tasks.lake.commit import Lake
from tasks.lake.store import LocalStore

url, out, page_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
creds = MixpanelCredentials(project_id=1, service_account_username="sandbox-user",
    service_account_secret="sandbox-secret", api_base_url=url, query_requests_per_hour=1_000_000)
start = time.perf_counter()
with MixpanelClient(creds.api_settings()) as client:
    result = export_people(client, Lake(LocalStore(Path(out)), 1),
        EngageQuery(page_size=page_size), max_concurrent_pages=5)
seconds = time.perf_counter() - start
print(json.dumps({"rows": result.rows, "pages": result.pages, "seconds": seconds,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def start_sandbox(profiles: int) -> tuple[subprocess.Popen[str], str]:
    args = ["--port", "0", "--no-gzip", "--profiles", str(profiles), "--query-max-per-hour", "0"]
    args += ["--query-max-concurrent", "0", "--max-per-hour", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(1),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(READY):
        proc.kill()
        raise RuntimeError(f"the sandbox did not start: {line!r}")
    return proc, line[len(READY) :].strip()


def measure(url: str, page_size: int) -> dict[str, float]:
    env = os.environ | {"MP_PIPELINES_STATE_DIR": tempfile.mkdtemp(prefix="bench-state-")}
    with tempfile.TemporaryDirectory(prefix="bench-people-") as out:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, url, out, str(page_size)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=pinned(0),
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.people", description=__doc__)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args(argv)
    proc, url = start_sandbox(args.profiles)
    try:
        started = time.perf_counter()
        result = measure(url, args.page_size)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    if result["rows"] != args.profiles:
        raise SystemExit(f"exported {result['rows']} profiles, the sandbox has {args.profiles}")
    rate = result["rows"] / result["seconds"]
    print("| profiles | pages | seconds | profiles/s | peak RSS MiB |\n|---:|---:|---:|---:|---:|")
    print(
        f"| {int(result['rows']):,} | {int(result['pages']):,} | {result['seconds']:.1f} | {rate:,.0f} "
        f"| {result['peak_rss_mib']:.0f} |"
    )
    print(
        f"(wall {time.perf_counter() - started:.1f} s; children RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
