"""The Prefect UI in headless Chromium: the deployments' run forms, and a custom backfill run from one.

Chromium is Debian's package (`make browser` installs it; `.ci/run` does, and sets
MP_REQUIRE_BROWSER=1 so that a missing browser fails CI instead of skipping). Playwright drives it
through `executable_path`: no browser is downloaded. The forms and the finished run's page are saved as
`.artifacts/ui-*.png` (or under $MP_TEST_ARTIFACTS). The pages are Prefect's V2 UI, which the server's
front page opens by default.
"""

from __future__ import annotations

import time
from datetime import date

import pytest
from playwright.sync_api import Browser, Page, Response, expect
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import FlowRun

from tests.conftest import assert_day_matches_sandbox, recent_days
from tests.kit.browser import ARTIFACTS
from tests.kit.cluster import Cluster


def pick_date(page: Page, value: str) -> None:
    """The first empty date field: a popover with a YYYY-MM-DD text box beside its calendar."""
    page.get_by_text("Pick a date").first.click()
    page.get_by_label("Date (yyyy-MM-dd)").fill(value)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")


def open_custom_run(cluster: Cluster, page: Page, deployment: str) -> None:
    """As a user does: the UI's front page (Prefect's V2 UI), Deployments, the deployment, Run, Custom run."""
    page.goto(cluster.ui_url, wait_until="networkidle")
    page.get_by_role("link", name="Deployments").first.click()
    page.get_by_role("link", name=deployment, exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.get_by_text("credentials", exact=True).wait_for(timeout=60_000)  # the form, past its skeleton
    page.wait_for_load_state("networkidle")


def test_the_run_forms_show_the_deployments_blocks_and_date_pickers(
    cluster: Cluster, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    open_custom_run(cluster, page, "backfill")
    expect(page.locator("fieldset").first).to_contain_text("mixpanel", timeout=60_000)  # names load late
    expect(page.locator("fieldset").filter(has_text="LocalDestination")).to_contain_text("local")
    page.screenshot(path=str(ARTIFACTS / "ui-backfill-form.png"), full_page=True)
    fieldsets = page.locator("fieldset").all_inner_texts()
    assert fieldsets[0].startswith("mixpanel"), fieldsets  # credentials: the deployment's block, picked
    assert any(text.endswith("local\nAdd") and "LocalDestination" in text for text in fieldsets), fieldsets
    # from_date and to_date are date pickers, to_date empty (= yesterday), not a "None" choice
    assert page.get_by_text("Pick a date").count() == 2
    assert "after `make deploy`" in page.get_by_text("Where the tables go").first.inner_text()

    open_custom_run(cluster, page, "reconcile-nightly")
    expect(page.locator("fieldset").filter(has_text="LocalDestination").first).to_contain_text(
        "local", timeout=60_000
    )
    page.screenshot(path=str(ARTIFACTS / "ui-reconcile-form.png"), full_page=True)
    destinations = page.locator("fieldset").all_inner_texts()
    assert any("LocalDestination" in text and "local" in text for text in destinations), destinations
    assert "block_document_id" not in page.content().split("Parameters", 1)[1]  # no raw JSON editor


def test_a_custom_run_from_the_ui_backfills_the_days(cluster: Cluster, browser: Browser) -> None:
    """As the README says: pick from_date, leave to_date empty (yesterday), Submit."""
    days = recent_days(1, cluster.sandbox)  # yesterday: from_date, and to_date by default
    run_name = f"ui-backfill-{int(time.time())}"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    failed: list[str] = []  # what the UI's own API calls answered, for the failure message
    page.on(
        "response",
        lambda r: failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None,
    )
    page.on("console", lambda m: failed.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    try:
        start_custom_run(cluster, page, run_name, days)
    except Exception as exc:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui-failure.png"), full_page=True)
        raise AssertionError(f"the UI did not start the run; its failed calls: {failed}") from exc

    run = wait_for_run(cluster, run_name, timeout=600)
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters["from_date"] == days[0].isoformat()
    assert run.parameters.get("to_date") is None  # the flow's default: yesterday
    for day in days:
        assert_day_matches_sandbox(cluster.data, cluster.sandbox, day)

    page.goto(f"{cluster.ui_url}/v2/runs/flow-run/{run.id}", wait_until="networkidle")
    page.get_by_text("Completed").first.wait_for(timeout=30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-backfill-run.png"), full_page=True)
    assert (ARTIFACTS / "ui-backfill-run.png").stat().st_size > 10_000


def start_custom_run(cluster: Cluster, page: Page, run_name: str, days: list[date]) -> None:
    open_custom_run(cluster, page, "backfill")
    page.locator("input[name=name]").fill(run_name)  # to find the run afterwards
    pick_date(page, days[0].isoformat())  # to_date left empty
    answers = []
    for _ in range(3):
        with page.expect_response(is_create_run, timeout=180_000) as answer:
            page.get_by_role("button", name="Submit").click()
        answers.append(answer.value.status)
        # Prefect answers 503 ("retry") when its SQLite database stays locked on a loaded machine; the UI
        # keeps the form: submit again, as a user would, only once the server said no run was created
        if answer.value.ok or find_runs(cluster, run_name):
            break
    assert find_runs(cluster, run_name), f"no run was created; the server answered {answers}"


def is_create_run(response: Response) -> bool:
    return response.request.method == "POST" and response.url.endswith("/create_flow_run")


def find_runs(cluster: Cluster, name: str) -> list[FlowRun]:
    with cluster.client() as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["backfill"])),
        )


def wait_for_run(cluster: Cluster, name: str, timeout: float) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = find_runs(cluster, name)
        assert len(runs) <= 1, "one run per submitted form"
        if runs and runs[0].state is not None and runs[0].state.is_final():
            return runs[0]
        time.sleep(1)
    pytest.fail(f"the run {name} started from the UI did not finish within {timeout:.0f} s")
