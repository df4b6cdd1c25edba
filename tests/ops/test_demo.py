"""The README's first command, `make demo`, as written (and its one switch, `FORMAT=delta`), in a copy of
the checkout that bootstraps itself as a fresh clone does (with this checkout's uv): the environment
without extras (the default), to which `FORMAT=delta` adds the `delta` extra."""

from __future__ import annotations

import subprocess
from pathlib import Path

import polars as pl
import pytest

from tests.kit.checkout import copy_checkout, user_environment


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("checkout")
    copy_checkout(copy, with_uv=True)
    return copy


def make(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the user's environment as it is, home folder included: the one test of a README command with no
    # variable added (its xdist group keeps the two runs, and their ephemeral servers, apart)
    env = user_environment("DEMO_")
    return subprocess.run(
        ["make", *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def installed(checkout: Path, package: str) -> bool:
    return any((checkout / ".venv" / "lib").glob(f"python3*/site-packages/{package}/__init__.py"))


def test_make_demo_exports_a_week_into_duckdb_and_queries_it(checkout: Path) -> None:
    done = make(checkout, "demo")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (checkout / "data" / "demo" / "mixpanel.duckdb").is_file()
    assert not (checkout / "data" / "1").exists(), "the deployments' folder is left to them"
    assert "the demo writes under data/demo/" in done.stdout
    assert "-- profiles and mapped ids" in done.stdout
    assert "sync status: 7 of 7 day(s) in sync with Mixpanel's counts" in done.stdout
    assert "-- each day's sync status (the view mp_sync_status)" in done.stdout
    # and the terminal's table of the same days, offline, from the counts the status run recorded
    shown = make(checkout, "status", "DATA_DIR=data/demo", "OFFLINE=1")
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
    assert "7 of 7 day(s) in sync" in shown.stdout
    assert installed(checkout, "prefect") and not installed(checkout, "prefect_aws"), "no extra by default"


def test_make_demo_with_format_delta_writes_delta_tables(checkout: Path) -> None:
    done = make(checkout, "demo", "FORMAT=delta")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = pl.scan_delta(str(checkout / "data" / "demo" / "1" / "delta" / "mp_master_event")).collect()
    assert events["day"].n_unique() == 7, "the demo's week, one partition per day"
    assert installed(checkout, "deltalake"), "FORMAT=delta added the delta extra"
    assert events.height == 7 * 5000, "the sandbox's 5,000 events per day (flows/demo.py checks each day too)"
