"""`make run` (flows/run.py) on a real deployment, as the README's terminal lines write it, and the optional
dates of the deployments' forms left empty.

The README's lines name fixed days; the only change made to them here is those days, replaced by days
chosen by construction (the README's may be in the future of the machine's date, or in the sandbox's
past retention).
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import date, timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from flows.params import Day, OptionalDay, optional_dates_without_default
from flows.run import RefusedError, one_sentence, parse_params
from flows.runtime import synchronous
from tests.conftest import assert_day_matches_sandbox, recent_days
from tests.kit.cluster import Cluster
from tests.kit.docs_text import marked_block

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def run_line(cluster: Cluster, line: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", line],
        cwd=cluster.checkout,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def backfill_schema() -> dict:
    from prefect.utilities.callables import parameter_schema

    from flows.backfill import backfill

    return parameter_schema(backfill.fn).model_dump_for_openapi()


def test_a_malformed_date_is_one_sentence_with_the_expected_form() -> None:
    with pytest.raises(RefusedError, match=r"^from_date must be a day written YYYY-MM-DD, e\.g\. 2026-11-01"):
        parse_params(["from_date=2026/11/01"], backfill_schema(), "mixpanel-backfill/backfill")
    adapters: list[TypeAdapter[date | None]] = [TypeAdapter(Day), TypeAdapter(OptionalDay)]
    for adapter in adapters:  # the flow's own check, for a run started from Python
        with pytest.raises(ValidationError, match="must be a day written YYYY-MM-DD"):
            adapter.validate_python("2026/11/01")
    assert TypeAdapter(OptionalDay).validate_python(None) is None


def test_terminal_parameters_left_empty_take_their_default_and_lists_split() -> None:
    schema = backfill_schema()
    assert parse_params(["from_date=2026-11-01", "to_date=", "days_per_run=2"], schema, "b") == {
        "from_date": "2026-11-01",
        "days_per_run": 2,
    }
    from prefect.utilities.callables import parameter_schema

    from flows.gdpr import gdpr

    gdpr_schema = parameter_schema(gdpr.fn).model_dump_for_openapi()
    assert parse_params(["distinct_ids=a@x.com,b@x.com"], gdpr_schema, "g") == {
        "distinct_ids": ["a@x.com", "b@x.com"]
    }
    with pytest.raises(RefusedError, match="has no parameter 'to_day'"):
        parse_params(["to_day=2026-11-01"], schema, "b")
    assert one_sentence("Flow run encountered an exception: BadRequestError: x.") == "BadRequestError: x."


def test_the_deployed_schema_accepts_an_empty_optional_date() -> None:
    from prefect.utilities.schema_tools import validate

    schema = optional_dates_without_default(backfill_schema())
    assert "default" not in schema["properties"]["to_date"]  # the UI's empty picker: left out, not null
    block = {"$ref": {"block_document_id": "00000000-0000-0000-0000-000000000001"}}
    params = {"credentials": block, "from_date": "2026-11-01"}
    for value in ({}, {"to_date": None}):
        assert validate(params | value, schema, raise_on_error=True) == []  # as the server checks it


def test_the_readmes_terminal_runs_print_the_days_and_end_completed(cluster: Cluster) -> None:
    days = recent_days(3, cluster.sandbox, back=30)
    lines = marked_block("terminal")
    assert [line.split()[2] for line in lines] == [
        "DEPLOYMENT=mixpanel-backfill/backfill",
        "DEPLOYMENT=mixpanel-reconcile/reconcile-nightly",
        "DEPLOYMENT=mixpanel-gdpr/gdpr-daily",
    ]
    dates = iter([days[0].isoformat(), days[-1].isoformat()])
    backfill = DATE.sub(lambda _: next(dates), lines[0])
    done = run_line(cluster, backfill)
    assert done.returncode == 0, done.stdout + done.stderr
    for day in days:
        assert_day_matches_sandbox(cluster.data, cluster.sandbox, day)
        assert re.search(rf"^\d\d:\d\d:\d\d {day}: \d+ rows", done.stdout, re.M), done.stdout
    assert done.stdout.rstrip().endswith("Completed"), done.stdout
    assert "prefect.flow-run" not in done.stdout and "Beginning flow run" not in done.stdout
    for line in lines[1:]:
        done = run_line(cluster, line)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.rstrip().endswith("Completed"), done.stdout


def test_a_failed_terminal_run_ends_with_its_sentence(cluster: Cluster) -> None:
    start = cluster.sandbox.cfg.current_day()
    params = f"from_date={start} to_date={start + timedelta(days=2)}"
    done = run_line(cluster, f"make run DEPLOYMENT=mixpanel-backfill/backfill PARAMS='{params}'")
    assert done.returncode != 0, done.stdout + done.stderr
    (said,) = [line for line in done.stderr.splitlines() if "mixpanel-backfill/backfill:" in line]
    assert "Failed: InvalidDateRangeError: " in said and "is in the future" in said, done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "deployment step" not in done.stdout


def test_a_malformed_date_from_the_terminal_creates_no_run(cluster: Cluster) -> None:
    with cluster.client() as client:
        before = len(client.read_flow_runs())
    done = run_line(cluster, "make run DEPLOYMENT=mixpanel-backfill/backfill PARAMS='from_date=2026/11/01'")
    assert done.returncode != 0
    assert "from_date must be a day written YYYY-MM-DD, e.g. 2026-11-01 (got '2026/11/01').\n" in done.stderr
    with cluster.client() as client:
        assert len(client.read_flow_runs()) == before


def test_runs_with_their_optional_dates_empty_are_accepted(cluster: Cluster) -> None:
    """What the UI sends for an empty picker (nothing) and what the CLI or API may send (null)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (yesterday,) = recent_days(1, cluster.sandbox)
    with temporary_settings({PREFECT_API_URL: cluster.api_url}):
        for name, params in (
            ("mixpanel-backfill/backfill", {"from_date": yesterday.isoformat(), "to_date": None}),
            ("mixpanel-events/events-daily", {"from_date": None, "to_date": None}),
            ("mixpanel-events/events-daily", {}),
        ):
            run = synchronous(run_deployment(name, parameters=params, timeout=600, poll_interval=1))
            assert run.state is not None and run.state.is_completed(), (name, params, run.state)
    assert_day_matches_sandbox(cluster.data, cluster.sandbox, yesterday)


def test_a_fanned_out_backfill_shows_its_children_and_sums_up_every_day(cluster: Cluster) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    days = recent_days(4, cluster.sandbox, back=45)
    params = f"from_date={days[0]} to_date={days[-1]} days_per_run=2 days_per_request=1"
    done = run_line(cluster, f"make run DEPLOYMENT=mixpanel-backfill/backfill PARAMS='{params}'")
    assert done.returncode == 0, done.stdout + done.stderr
    for first, last in ((days[0], days[1]), (days[2], days[3])):
        for day in (first, last):  # each child's own day lines, under its name
            assert re.search(rf"\[backfill {first}\.\.{last}\] {day}: \d+ rows", done.stdout), done.stdout
    parent = re.search(r"\(([0-9a-f-]{36})\)", done.stdout).group(1)  # type: ignore[union-attr]
    with cluster.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent]))
        )
    progress = [a for a in artifacts if a.type == "progress"]
    assert [a.description for a in progress] == ["Days done: 4 of 4"]
    (summary,) = [a for a in artifacts if a.key == "mixpanel-backfill-summary"]
    table = summary.data if isinstance(summary.data, list) else json.loads(summary.data)
    expected = cluster.sandbox.expected(days[0], days[-1])
    assert [(row["day"], row["rows"], row["state"]) for row in table] == [
        (day.isoformat(), expected[day.isoformat()]["rows"], "Completed") for day in days
    ]
