"""Installing only the destinations you use: an environment synced as `make setup EXTRAS=...` does
(the locked dependencies, no dev group) offers exactly the destinations whose integration it holds,
and a flow run's process imports no other integration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"
INTEGRATIONS = ("prefect_aws", "prefect_gcp", "prefect_azure", "prefect_snowflake", "boto3", "duckdb")

PROBE = f"""
import json, sys
import flows.events, flows.backfill, flows.reconcile, flows.gdpr, flows.people, flows.identity
from blocks.destinations.catalog import BLOCK_TYPES
print(json.dumps({{
    "blocks": sorted(b.__name__ for b in BLOCK_TYPES),
    "imported": sorted(m for m in {INTEGRATIONS!r} if m in sys.modules),
}}))
"""


def synced(tmp_path: Path, extras: list[str]) -> Path:
    venv = tmp_path / "venv"
    flags = [arg for extra in extras for arg in ("--extra", extra)]
    subprocess.run(
        [str(UV), "sync", "--frozen", "--no-dev", "--python", sys.executable, *flags],
        cwd=ROOT,
        env=os.environ | {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return venv / "bin" / "python"


def probe(python: Path) -> dict[str, list[str]]:
    done = subprocess.run(
        [str(python), "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


BASE = ["DuckDBWarehouse", "LocalDestination", "MixpanelCredentials", "MixpanelGdprCredentials"]


@pytest.mark.parametrize(
    ("extras", "offered", "loaded"),
    [
        ([], BASE, []),
        (["s3"], sorted([*BASE, "RedshiftSpectrumDestination", "S3Destination"]), ["boto3", "prefect_aws"]),
    ],
)
def test_an_environment_offers_the_destinations_of_its_extras_only(
    tmp_path: Path, extras: list[str], offered: list[str], loaded: list[str]
) -> None:
    found = probe(synced(tmp_path, extras))
    assert found["blocks"] == offered
    # only the extras' own integrations are imported (DuckDB itself only when a load runs)
    assert found["imported"] == loaded
