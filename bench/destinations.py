"""`python -m bench.destinations`: events/s and peak RSS of one 1M-event day into local, DuckDB, S3 (moto),
Delta Lake and Iceberg (both on a local folder; Iceberg with its SQLite catalog).

For DuckDB the export includes loading the day into the database; the load alone (the committed
Parquet files into the table, in one transaction) is timed again afterwards and reported apart.

The sandbox (CPU 1) serves the cached benchmark day; each export runs in a fresh child process
(CPU 0) whose peak RSS is its own. moto runs in a third process, so its CPU competes with the
sandbox's core, not the pipeline's: the S3 figure includes real HTTP uploads and server-side copies.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.events import DAY
from bench.harness import ROOT, SandboxProcess, pinned

CHILD = """
import json, os, resource, sys, time
from datetime import date
from pathlib import Path
from blocks.mixpanel import MixpanelCredentials
from tasks.pipeline.export import ExportSettings, export_days
from tasks.mixpanel.client import MixpanelClient

url, target, day = sys.argv[1], json.loads(sys.argv[2]), date.fromisoformat(sys.argv[3])
if target["kind"] == "local":
    from blocks.destinations.local import LocalDestination
    block = LocalDestination(path=target["path"])
elif target["kind"] == "delta":
    from blocks.destinations.delta import DeltaLakeDestination
    from blocks.destinations.local import LocalDestination
    block = DeltaLakeDestination(files=LocalDestination(path=target["path"]))
elif target["kind"] == "iceberg":
    from blocks.destinations.iceberg import IcebergDestination
    from blocks.destinations.local import LocalDestination
    block = IcebergDestination(files=LocalDestination(path=target["path"]))
elif target["kind"] == "duckdb":
    from blocks.destinations.duckdb import DuckDBWarehouse
    block = DuckDBWarehouse(database=target["path"] + "/mixpanel.duckdb", files=target["path"])
else:
    from prefect_aws import AwsCredentials, S3Bucket
    from blocks.destinations.s3 import S3Destination
    aws = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
        aws_client_parameters={"endpoint_url": target["endpoint"]})
    block = S3Destination(bucket=S3Bucket(bucket_name=target["bucket"], credentials=aws))
creds = MixpanelCredentials(project_id=1, service_account_username="sandbox-user",
    service_account_secret="sandbox-secret", api_base_url=url)
start = time.perf_counter()
with MixpanelClient(creds.api_settings()) as client:
    (result,) = export_days(client, block.connect(1), [day], ExportSettings(run_id="bench"))
seconds = time.perf_counter() - start
load_seconds = None
if target["kind"] == "duckdb":
    from tasks.lake.commit import At
    dest = block.connect(1)
    manifest = dest.manifest("mp_master_event", day.isoformat())
    (hook,) = dest.hooks  # the warehouse's: the day loaded again, as a commit loads it
    os.sched_setaffinity(0, range(os.cpu_count() or 1))  # DuckDB's threads take every CPU, as in a run
    start = time.perf_counter()
    hook.committed(At(dest, "mp_master_event", day.isoformat()), manifest, None)
    load_seconds = time.perf_counter() - start
print(json.dumps({"rows": result.rows, "fingerprint": result.fingerprint, "seconds": seconds,
    "load_seconds": load_seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pinned(1),
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    request = urllib.request.Request(f"{endpoint}/bench", method="PUT")
    urllib.request.urlopen(request, timeout=10)  # create the bucket (moto: no auth)
    return proc, endpoint


def run_export(url: str, target: dict[str, str]) -> dict[str, float]:
    env = os.environ | {"MP_PIPELINES_STATE_DIR": tempfile.mkdtemp(prefix="bench-state-")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url, json.dumps(target), DAY.isoformat()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=pinned(0),
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.destinations", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--only", default="local,duckdb,s3,delta,iceberg", help="comma-separated destinations to run"
    )
    args = parser.parse_args(argv)
    log = args.out / "destinations.log"
    only = set(args.only.split(","))
    moto, endpoint = start_moto()
    try:
        with SandboxProcess(args.events, args.out / "cache", DAY, 1, log) as sandbox:
            expected = sandbox.day_data()
            results: dict[str, dict[str, float]] = {}
            for kind in ("local", "duckdb", "delta", "iceberg"):
                if kind in only:
                    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as folder:
                        results[kind] = run_export(sandbox.url, {"kind": kind, "path": folder})
            if "s3" in only:
                results["s3 (moto)"] = run_export(
                    sandbox.url, {"kind": "s3", "endpoint": endpoint, "bucket": "bench"}
                )
    finally:
        moto.terminate()
        moto.wait(timeout=15)
    print("| destination | events | seconds | events/s | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        if (r["rows"], r["fingerprint"]) != (expected.rows, expected.fingerprint):
            raise SystemExit(f"{name}: exported {r['rows']} rows / {r['fingerprint']}, expected {expected}")
        rate = r["rows"] / r["seconds"]
        print(f"| {name} | {int(r['rows']):,} | {r['seconds']:.1f} | {rate:,.0f} | {r['peak_rss_mib']:.0f} |")
    if "duckdb" in results and results["duckdb"]["load_seconds"] is not None:
        print(
            f"\nDuckDB load alone (1 day's Parquet into mp_master_event, one transaction): "
            f"{results['duckdb']['load_seconds']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
