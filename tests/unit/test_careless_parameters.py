"""Careless parameters and leaky logs (issue 14): each is refused with one sentence or kept secret."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials
from tasks.errors import BadRequestError, FatalError

CREDENTIALS = MixpanelCredentials(
    project_id=1,
    service_account_username="sa",
    service_account_secret="pw",
    api_base_url="http://127.0.0.1:9",
)


def test_a_negative_max_concurrent_requests_is_refused_with_a_sentence() -> None:
    from flows.backfill import backfill
    from flows.events import events

    for flow in (events, backfill):
        with pytest.raises(BadRequestError, match=r"max_concurrent_requests must be at least 1 \(got -2\)"):
            kwargs = (
                {"from_date": None} if flow is events else {"from_date": CREDENTIALS.calendar().yesterday()}
            )
            flow.fn(credentials=CREDENTIALS, max_concurrent_requests=-2, **kwargs)


def test_a_negative_max_rejected_lines_is_refused() -> None:
    from flows.exporting import settings_for

    with pytest.raises(BadRequestError, match="max_rejected_lines must be 0 or more"):
        settings_for(CREDENTIALS, "parquet", -1, None)


def test_a_negative_duckdb_lock_wait_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from blocks.destinations.duckdb import DuckDBWarehouse
    from tasks.warehouses.duckdb_loader import DuckDBLoader

    with pytest.raises(FatalError, match=r"lock_wait_seconds must be 0 or more \(got -1\)"):
        DuckDBLoader(tmp_path / "x.duckdb", lock_wait_seconds=-1)
    with pytest.raises(FatalError):
        DuckDBLoader(tmp_path / "x.duckdb", lock_wait_seconds=float("nan"))
    with pytest.raises(ValidationError):
        DuckDBWarehouse(lock_wait_seconds=-1)


def test_the_snowflake_put_path_cannot_end_its_literal() -> None:
    from tasks.warehouses.snowflake_loader import put_source

    assert put_source("/tmp/mp/part-00000.parquet") == "'file:///tmp/mp/part-00000.parquet'"
    quoted = put_source("/tmp/it's; DROP TABLE x; --\\/f.parquet")
    assert quoted == "'file:///tmp/it\\'s; DROP TABLE x; --\\\\/f.parquet'"
    body = quoted[1:-1]
    assert all(body[i - 1] == "\\" for i, c in enumerate(body) if c == "'")
    with pytest.raises(FatalError, match="control character"):
        put_source("/tmp/a\nb.parquet")


def test_the_gdpr_project_token_never_reaches_the_http_log(caplog: pytest.LogCaptureFixture) -> None:
    from tasks.mixpanel.gdpr_api import GdprClient

    token = "project-token-4f2a9c"
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"status": "ok", "results": {"status": "SUCCESS"}})

    gdpr = MixpanelGdprCredentials(project_token=token, oauth_token="oauth")
    caplog.set_level(logging.DEBUG, logger="httpx")
    with GdprClient(
        CREDENTIALS.api_settings(),
        gdpr.settings(),
        transport=httpx.MockTransport(answer),
        notify=lambda _: None,
    ) as client:
        assert client.status("task-1") == "SUCCESS"
    assert token in seen[0], "the API still receives the token"
    assert "HTTP Request" in caplog.text and "token=***" in caplog.text
    assert token not in caplog.text
