"""flows.outage: which errors mean "the Prefect API did not answer", and how a run goes on without it."""

from __future__ import annotations

import httpx
import pytest

from flows import outage
from flows.outage import Outage, unreachable


def _status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1:4200/api/health")
    return httpx.HTTPStatusError("status", request=request, response=httpx.Response(code, request=request))


def _wrapped(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("Unable to acquire concurrency slots") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("All connection attempts failed"), True),
        (httpx.ReadTimeout("timed out"), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (_status(503), True),
        (_wrapped(httpx.ConnectError("refused")), True),
        (_status(404), False),
        (_status(409), False),
        (ValueError("a bug"), False),
        (_wrapped(ValueError("a bug")), False),
    ],
)
def test_only_an_api_that_did_not_answer_is_unreachable(error: BaseException, expected: bool) -> None:
    assert unreachable(error) is expected


def test_an_optional_call_is_skipped_while_the_api_is_away_and_made_again_when_it_is_back() -> None:
    link = Outage()
    answers: list[BaseException | str] = [httpx.ConnectError("refused"), httpx.ConnectError("refused"), "ok"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert link.optional(call) is None and link.ongoing
    assert link.optional(call) is None and link.ongoing
    assert link.optional(call) == "ok" and not link.ongoing


def test_a_refusal_is_no_outage_and_is_raised() -> None:
    link = Outage()

    def refused() -> None:
        raise _status(422)

    with pytest.raises(httpx.HTTPStatusError):
        link.optional(refused)
    assert not link.ongoing


def test_a_required_call_waits_for_the_api_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outage, "POLL_SECONDS", 0.01)
    link = Outage()
    tries = iter([httpx.ConnectError("refused")] * 3 + [None])

    def call() -> str:
        error = next(tries)
        if error is not None:
            raise error
        return "reported"

    assert link.required(call, seconds=5) == "reported" and not link.ongoing

    def never() -> None:
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        link.required(never, seconds=0.05)
