"""Error classification and the whole-unit retry policy (no network: see test_events_e2e for HTTP)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks.mixpanel import MixpanelCredentials
from tasks.errors import (
    BadCredentialsError,
    BadRequestError,
    FatalError,
    PermissionDeniedError,
    PlanError,
    RateLimitedError,
    RetriableError,
    ServerError,
    TimezoneSettingError,
)
from tasks.mixpanel.client import (
    ExportRequest,
    MixpanelClient,
    RetryStats,
    backoff_seconds,
    classify_response,
    retry_after_seconds,
)
from tasks.mixpanel.ratelimit import RateBudget, Window


@pytest.mark.parametrize(
    ("status", "body", "kind", "says"),
    [
        (
            401,
            '{"error": "Unable to authenticate request"}',
            BadCredentialsError,
            "check the service account",
        ),
        (
            400,
            '{"error": "Unable to authenticate request"}',
            BadCredentialsError,
            "check the service account",
        ),
        (402, "Payment Required", PlanError, "plan"),
        (403, '{"error": "forbidden"}', PermissionDeniedError, "give the service account a role"),
        (
            400,
            '{"error": "to_date cannot be later than today"}',
            TimezoneSettingError,
            "check the project timezone",
        ),
        (400, '{"error": "invalid where"}', BadRequestError, "fix the request parameters"),
        (
            429,
            '{"error": "too many export requests in progress for this project"}',
            RateLimitedError,
            "retrying",
        ),
        (503, "<html>oops</html>", ServerError, "503"),
    ],
)
def test_each_answer_maps_to_one_error_with_a_fix(status: int, body: str, kind: type, says: str) -> None:
    error = classify_response(status, body, retry_after=7.0)
    assert type(error) is kind
    assert says in str(error)
    if isinstance(error, RetriableError):
        assert error.retry_after == 7.0
    else:
        assert isinstance(error, FatalError)


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(1)
    pauses = [backoff_seconds(n, 2.0, None, rng) for n in (1, 2, 3)]
    assert 1.0 <= pauses[0] <= 2.0 and 2.0 <= pauses[1] <= 4.0 and 4.0 <= pauses[2] <= 8.0
    assert backoff_seconds(40, 2.0, None, rng) <= 300.0


@pytest.mark.parametrize(
    ("attempt", "retry_after", "low", "high"),
    [
        (1, 1.0, 1.0, 1.2),  # the server's wait plus at most 20 %, at least 0.2 s of spread
        (5, 1.0, 1.0, 1.2),  # the attempt number does not matter: no exponential growth
        (8, 0.0, 0.0, 0.2),
        (1, 30.0, 30.0, 35.0),  # 20 % of 30 s = 6 s, capped at 5 s
        (2, 3600.0, 3600.0, 3605.0),  # longer than the exponential cap: the server is obeyed
    ],
)
def test_a_named_wait_is_waited_plus_a_little_jitter(
    attempt: int, retry_after: float, low: float, high: float
) -> None:
    rng = random.Random(3)
    pauses = [backoff_seconds(attempt, 5.0, retry_after, rng) for _ in range(200)]
    assert all(low <= p <= high for p in pauses)
    assert len(set(pauses)) > 1, "jittered"


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    import httpx

    now = datetime(2026, 12, 1, 15, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(httpx.Headers({"Retry-After": "1"})) == 1.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "2.5"})) == 2.5
    assert retry_after_seconds(httpx.Headers({"Retry-After": "Tue, 01 Dec 2026 15:00:07 GMT"}), now) == 7.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "Tue, 01 Dec 2026 14:00:00 GMT"}), now) == 0.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_seconds(httpx.Headers({})) is None


def test_five_429s_with_retry_after_1_cost_about_5_seconds_not_minutes(tmp_path: Path) -> None:
    """Against the sandbox over HTTP: five 429 answers naming Retry-After: 1, then the data. The waits
    the client computes (recorded, not slept) add up to 5-6 s; the old exponential backoff from
    5 s took 3.8 + 9.8 + 13.4 + 22.1 + 77 = 126 s."""
    from tasks.pipeline.export import ExportSettings, export_days
    from tests.conftest import credentials_for, local_destination, recent_days, start_sandbox

    server = start_sandbox(max_per_second=None, max_per_hour=None)
    try:
        server.add_faults([{"kind": "status", "code": 429, "retry_after": 1, "times": 5}])
        slept: list[float] = []
        creds = credentials_for(server, retry_backoff_seconds=5.0, max_attempts=8)
        budget = RateBudget("t", [Window(100, 1.0)], 10, tmp_path / "b.db")
        with MixpanelClient(creds.api_settings(), budget=budget, sleep=slept.append) as client:
            (result,) = export_days(
                client, local_destination(tmp_path), recent_days(1, server), ExportSettings(run_id="r")
            )
        assert result.rows > 0
        assert len(slept) == 5 and all(1.0 <= s <= 1.2 for s in slept)
        assert 5.0 <= sum(slept) <= 6.0
    finally:
        server.stop()


def test_answers_that_name_no_wait_keep_the_exponential_backoff(tmp_path: Path) -> None:
    slept: list[float] = []
    budget = RateBudget("t", [Window(10, 1.0)], 10, tmp_path / "b.db")
    client = MixpanelClient(
        credentials(max_attempts=6, retry_backoff_seconds=5.0).api_settings(),
        budget=budget,
        sleep=slept.append,
    )

    def unit() -> None:
        raise RateLimitedError("busy")  # a 429 without Retry-After

    with pytest.raises(RetriableError):
        client.with_retries(unit, "export")
    for n, pause in enumerate(slept, start=1):
        assert 5.0 * 2 ** (n - 1) / 2 <= pause <= 5.0 * 2 ** (n - 1)


def credentials(**overrides: object) -> MixpanelCredentials:
    values: dict[str, object] = {
        "project_id": 1,
        "service_account_username": "u",
        "service_account_secret": "very-secret-value",
        "max_attempts": 3,
        "retry_backoff_seconds": 0.5,
    }
    return MixpanelCredentials(**(values | overrides))


def test_retries_run_the_whole_unit_again_then_give_up_with_a_clear_message(tmp_path: Path) -> None:
    slept: list[float] = []
    budget = RateBudget("t", [Window(10, 1.0)], 10, tmp_path / "b.db")
    client = MixpanelClient(credentials().api_settings(), budget=budget, sleep=slept.append)
    calls = []

    def unit() -> None:
        calls.append(1)
        raise RateLimitedError("busy", retry_after=9.0)

    stats = RetryStats()
    with pytest.raises(RetriableError, match=r"failed 3 times.*previous data is unchanged"):
        client.with_retries(unit, "export 2026-01-01", stats)
    assert len(calls) == 3 and stats.retries == 2 and all(9.0 <= s <= 10.8 for s in slept) and len(slept) == 2


def test_fatal_errors_are_not_retried(tmp_path: Path) -> None:
    client = MixpanelClient(
        credentials().api_settings(), budget=RateBudget("t", [Window(10, 1.0)], 10, tmp_path / "b.db")
    )
    calls = []

    def unit() -> None:
        calls.append(1)
        raise PlanError("no plan")

    with pytest.raises(PlanError):
        client.with_retries(unit, "x")
    assert calls == [1]


def test_request_parameters_and_residency_hosts() -> None:
    from datetime import date

    req = ExportRequest(date(2026, 1, 1), date(2026, 1, 7), events=("A", "B"), where='properties["x"] == 1')
    assert req.params(42) == {
        "from_date": "2026-01-01",
        "to_date": "2026-01-07",
        "project_id": "42",
        "event": '["A", "B"]',
        "where": 'properties["x"] == 1',
    }
    assert credentials(residency="EU").export_url() == "https://data-eu.mixpanel.com/api/2.0/export"
    assert credentials(residency="IN").export_url() == "https://data-in.mixpanel.com/api/2.0/export"
    assert credentials(api_base_url="http://127.0.0.1:9/").export_url() == "http://127.0.0.1:9/api/2.0/export"


def test_secrets_do_not_show_in_the_block_repr() -> None:
    creds = credentials(project_secret="legacy-secret-xyz")
    assert "very-secret-value" not in repr(creds) and "legacy-secret-xyz" not in repr(creds)
    assert creds.basic_auth() == ("u", "very-secret-value")
    legacy = MixpanelCredentials(project_id=1, project_secret="legacy-secret-xyz")
    assert legacy.basic_auth() == ("legacy-secret-xyz", "")


def test_credentials_block_validates_timezone_and_auth() -> None:
    with pytest.raises(ValueError, match="unknown timezone"):
        credentials(project_timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="service_account_username and service_account_secret"):
        MixpanelCredentials(project_id=1)
