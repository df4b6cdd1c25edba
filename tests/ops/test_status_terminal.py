"""`make status` (flows/status_terminal.py) on a folder the events flow exported from the sandbox: online with
the credentials block, offline from what each day recorded, the exit code, and its sentences for bad input."""

from __future__ import annotations

import io
import subprocess
from datetime import date
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.destinations.local import LocalDestination
from flows.events import events
from flows.status_terminal import main
from sandbox import SandboxServer
from tests.conftest import credentials_for, recent_days
from tests.kit.checkout import ROOT

pytestmark = pytest.mark.usefixtures("prefect_server")
NOWHERE = "http://127.0.0.1:9/api"  # the discard port: nothing answers


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), out)
    return code, out.getvalue()


@pytest.fixture
def folder(sandbox: SandboxServer, tmp_path: Path) -> tuple[Path, list[date]]:
    data = tmp_path / "data"
    days = recent_days(4, sandbox)
    events(
        credentials_for(sandbox),
        LocalDestination(path=str(data), create_missing=True),
        from_date=days[0],
        to_date=days[-1],
    )
    credentials_for(sandbox).save("status-terminal", overwrite=True)
    return data, days


def test_in_sync_exits_0_and_late_events_exit_1_then_offline_shows_the_recorded_counts(
    sandbox: SandboxServer, folder: tuple[Path, list[date]]
) -> None:
    data, days = folder
    code, text = run("--data", str(data), "--credentials", "status-terminal")
    assert code == 0, text
    assert (
        "4 of 4 day(s) in sync" in text and f"{days[0]}..{str(days[-1])[5:]}" in text and "(4 days)" in text
    )

    sandbox.add_events(days[2], 3, user="late")
    code, text = run("--data", str(data), "--credentials", "status-terminal")
    assert code == 1
    assert f"{days[2]} differs: Mixpanel counts" in text and "3 of 4 day(s) in sync" in text

    with temporary_settings({PREFECT_API_URL: NOWHERE}):
        code, text = run("--data", str(data))  # the project found in the folder, the counts each day recorded
    assert code == 1 and f"{days[2]} differs" in text
    assert (
        "offline, or the Prefect server does not answer: the counts shown are the last ones each day recorded"
        in text
    )

    # asked to stay offline, a server that answers is not asked either: the same recorded counts
    before = sandbox.stats()["counts_requests"]
    code, text = run("--data", str(data), "--credentials", "status-terminal", "--offline")
    assert code == 1 and f"{days[2]} differs" in text and "offline, or the Prefect server" in text
    assert sandbox.stats()["counts_requests"] == before


def test_a_lost_file_exits_1_and_says_how_to_mend_it(folder: tuple[Path, list[date]]) -> None:
    data, days = folder
    files = sorted((data).glob(f"*/mp_master_event/{days[1]:%Y/%m/%d}/*.parquet"))
    files[0].unlink()
    code, text = run("--data", str(data), "--credentials", "status-terminal")
    assert code == 1 and f"{days[1]} damaged: {days[1]}: 1 committed file(s) are gone" in text


def test_bad_input_gets_one_sentence_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with temporary_settings({PREFECT_API_URL: NOWHERE}):
        assert main(["--data", str(tmp_path / "empty")]) == 2
        assert "holds no project's committed day: export a day first" in capsys.readouterr().err
        assert main(["--block", "mixpanel-local-destination/local"]) == 2
        assert "which does not answer: start it (make server)" in capsys.readouterr().err


def test_make_status_runs_the_terminal_table() -> None:
    recipe = subprocess.run(
        ["make", "-n", "status", "BLOCK=mixpanel-duckdb-warehouse/warehouse", "VERIFY=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (
        ".venv/bin/python -m flows.status_terminal --data data --days 90 --block mixpanel-duckdb-warehouse/warehouse"
        in recipe
    )
    assert "--verify" in recipe
