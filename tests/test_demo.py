"""The README's first command, `make demo`, as written (and its one switch, `FORMAT=delta`), in a copy of
the checkout that reuses this checkout's bootstrapped tools and environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import polars as pl
import pytest

from tests.test_readme_ops import ROOT, _copy_checkout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("checkout")
    _copy_checkout(copy)
    for bootstrapped in (".tools", ".venv"):  # what `make setup` made here: the copy need not make it again
        (copy / bootstrapped).symlink_to(ROOT / bootstrapped)
    return copy


def make(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MP_PIPELINES_", "DEMO_"))}
    return subprocess.run(
        ["make", *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def test_make_demo_exports_a_week_into_duckdb_and_queries_it(checkout: Path) -> None:
    done = make(checkout, "demo")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (checkout / "data" / "mixpanel.duckdb").is_file()
    assert "-- profiles and mapped ids" in done.stdout


def test_make_demo_with_format_delta_writes_delta_tables(checkout: Path) -> None:
    done = make(checkout, "demo", "FORMAT=delta")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = pl.scan_delta(str(checkout / "data" / "1" / "delta" / "mp_master_event")).collect()
    assert events["day"].n_unique() == 7, "the demo's week, one partition per day"
    assert events.height == 7 * 5000, "the sandbox's 5,000 events per day (flows/demo.py checks each day too)"
