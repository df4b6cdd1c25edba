"""The status artifacts in the Prefect UI, in headless Chromium: the chart image is drawn (decoded, non-empty,
on screen) and every day's state can be read as text, on a real Prefect server of this module's own (the
test harness's server serves no UI). Screenshots go to `.artifacts/ui-status-*.png` (or $MP_TEST_ARTIFACTS).
Chromium as in tests/ops/test_ui.py (`make browser`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.destinations.local import LocalDestination
from flows.events import events
from flows.status import artifact_key, status
from sandbox import SandboxServer
from tasks.lake.commit import Lake
from tasks.lake.store import LocalStore
from tests.conftest import credentials_for, recent_days
from tests.kit.browser import ARTIFACTS
from tests.kit.cluster import _wait_healthy
from tests.stores.process import free_port
from tests.stores.process import stop as stop_process


@pytest.fixture(scope="module")
def ui_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` with its UI, its own PREFECT_HOME and SQLite file."""
    home = tmp_path_factory.mktemp("prefect-ui-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": url,
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    }
    log = home / "server.log"
    prefect = Path(sys.executable).parent / "prefect"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(url, process, log, seconds=240)
        yield url
    finally:
        stop_process(process)


def test_the_status_chart_and_the_days_states_show_in_the_ui(
    ui_api: str,
    browser: Browser,
    sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    block = LocalDestination(path=str(tmp_path / "data"), create_missing=True)
    days = recent_days(6, sandbox)
    with temporary_settings({PREFECT_API_URL: ui_api}):
        events(credentials_for(sandbox), block, from_date=days[0], to_date=days[-1])
        sandbox.add_events(days[3], 40, user="late")  # a day that differs
        lake = Lake(LocalStore(Path(block.path)), sandbox.cfg.project_id)
        manifest = lake.manifest("mp_master_event", days[1].isoformat())
        assert manifest is not None
        (Path(block.path) / manifest.files[0].key).unlink()  # a day damaged by hand
        status(credentials_for(sandbox), block)
        key = artifact_key(lake)
        with get_client(sync_client=True) as client:
            (chart,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-chart"]))
            )
            (table,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    ui = ui_api.removesuffix("/api")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{ui}/v2/artifacts/artifact/{chart.id}", wait_until="networkidle")
    image = page.locator('img[alt^="Events per day"]')
    image.wait_for(state="visible", timeout=60_000)
    drawn = image.evaluate("i => i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null")
    box = image.bounding_box()
    page.screenshot(path=str(ARTIFACTS / "ui-status-chart.png"), full_page=True)
    assert drawn is not None and drawn[0] >= 500, "the chart image was decoded"
    assert box is not None and box["width"] > 400 and box["height"] > 150, "and is on screen"
    text = page.locator("body").inner_text()
    assert "4 of 6 day(s) in sync" in text and "Freshness:" in text
    assert f"{days[1]}\tdamaged" in text or (str(days[1]) in text and "damaged" in text)
    assert str(days[3]) in text and "differs" in text and "Mixpanel counts" in text

    page.goto(f"{ui}/v2/artifacts/artifact/{table.id}", wait_until="networkidle")
    page.get_by_text("differs").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "ui-status-table.png"), full_page=True)
    cells = page.locator("body").inner_text()
    for day in days:
        assert day.isoformat() in cells
    assert cells.count("in_sync") == 4 and "damaged" in cells and "differs" in cells
