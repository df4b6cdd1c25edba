"""What a person watching a run reads: one sentence per failure, and every wait on the rate budget."""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.concurrency.sync import rate_limit
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL

from blocks.destinations.local import LocalDestination
from flows import limits
from flows.events import events
from flows.runtime import OneSentencePerRun
from sandbox import SandboxServer
from tasks.errors import BadCredentialsError
from tasks.mixpanel.ratelimit import RateBudget, Window, state_dir
from tests.conftest import credentials_for, recent_days

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_logs(flow_run_id: UUID | None) -> list[str]:
    assert flow_run_id is not None, "a flow run's state names its run"
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_a_wrong_secret_is_one_sentence_without_traceback(sandbox: SandboxServer, tmp_path: Path) -> None:
    days = recent_days(4, sandbox)
    state = events(
        credentials=credentials_for(sandbox, service_account_secret="not-the-secret-5f2a"),
        destination=LocalDestination(path=str(tmp_path)),
        from_date=days[0],
        to_date=days[-1],
        days_per_request=1,
        return_state=True,
    )
    assert state.is_failed()
    messages = run_logs(state.state_details.flow_run_id)
    sentence = "Mixpanel rejected the credentials"
    assert sum(sentence in m for m in messages) == 1, messages
    assert [m for m in messages if sentence in m] == [
        "BadCredentialsError: Mixpanel rejected the credentials: check the service account username, secret "
        "and project_id in the MixpanelCredentials block."
    ]
    assert not any("Traceback" in m for m in messages), messages
    assert "not-the-secret-5f2a" not in "\n".join(messages)


def record(message: str, exc: BaseException | None, run: str = "run-1") -> logging.LogRecord:
    item = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, message, (), None)
    if exc is not None:
        item.exc_info = (type(exc), exc, None)
    item.flow_run_id = run
    return item


def test_an_unexpected_error_keeps_its_traceback_and_known_ones_are_said_once_per_run() -> None:
    quiet = OneSentencePerRun()
    bug = record("Task run failed with exception: %r", RuntimeError("a bug"))
    assert quiet.filter(bug) and bug.exc_info is not None
    fatal = BadCredentialsError("Mixpanel rejected the credentials.")
    first = record("Task run failed with exception: %r", fatal)
    assert quiet.filter(first)
    assert (first.getMessage(), first.exc_info) == (
        "BadCredentialsError: Mixpanel rejected the credentials.",
        None,
    )
    assert not quiet.filter(record("Encountered exception during execution: %r", fatal))
    assert not quiet.filter(record("Finished in state Failed('Mixpanel rejected the credentials.')", None))
    assert quiet.filter(record("Task run failed with exception: %r", fatal, run="run-2")), "once per run"


def spend_hourly_budget(monkeypatch: pytest.MonkeyPatch, project_id: int, seconds_left: float) -> None:
    """This host has made its 60 exports of the hour; the oldest leaves the window ``seconds_left``
    after the run's first export asks for its slot (not after the test starts: on a busy machine the
    flow may take longer than that to get there, and then there would be no wait to see)."""
    key = f"export:{project_id}"
    RateBudget(key, [Window(60, 3600.0)], 100)  # creates the database
    acquire = RateBudget._try_acquire
    spent: list[bool] = []

    def spend_then_acquire(budget: RateBudget, token: str) -> tuple[float, str]:
        if budget.key == key and not spent:
            assert budget.path.parent == state_dir()
            spent.append(True)
            now = time.time()
            with sqlite3.connect(budget.path) as conn:
                conn.executemany(
                    "INSERT INTO starts VALUES (?, ?)",
                    [(key, now - 3600 + seconds_left + i * 0.001) for i in range(60)],
                )
        return acquire(budget, token)

    monkeypatch.setattr(RateBudget, "_try_acquire", spend_then_acquire)


def test_a_wait_for_the_hourly_budget_is_logged_and_shown_in_the_progress(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spend_hourly_budget(monkeypatch, sandbox.cfg.project_id, seconds_left=3)
    state = events(
        credentials=credentials_for(sandbox),
        destination=LocalDestination(path=str(tmp_path)),
        from_date=recent_days(1, sandbox)[0],
        return_state=True,
    )
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    waits = [m for m in run_logs(flow_run_id) if m.startswith("waiting")]
    assert len(waits) == 1, waits
    assert "60/hour budget is used up" in waits[0]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress and progress[0].data == 100.0
    assert progress[0].description == f"Days committed: 1 of 1; last wait: {waits[0]}"


def test_a_wait_for_the_servers_hourly_limit_is_reported() -> None:
    """Every worker of a server shares the global limits; a run that waits for one says so, once."""
    limits.ensure_limits()
    limits.limits_exist.cache_clear()
    # asked now, so that the waiter's report timer starts as soon as it asks for its slot
    assert limits.limits_exist(PREFECT_API_URL.value())
    messages: list[str] = []
    try:
        # a slot frees in 15 s here, not in two minutes: well after the report timer (5 s) fires,
        # even when the other acquisitions are slow on a busy machine
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(
                limits.PER_HOUR.name, GlobalConcurrencyLimitUpdate(slot_decay_per_second=1 / 15)
            )
        rate_limit(limits.PER_HOUR.name, occupy=limits.PER_HOUR.limit)  # another worker spent the burst
        waiter = threading.Thread(target=lambda: limits.export_slot(messages.append).__enter__(), daemon=True)
        waiter.start()
        waiter.join(timeout=90)
        assert not waiter.is_alive(), "the slot was granted once one freed"
    finally:
        with get_client(sync_client=True) as client:  # the other tests run without server-wide limits
            for item in limits.LIMITS:
                client.delete_global_concurrency_limit_by_name(item.name)
        limits.limits_exist.cache_clear()
    assert messages == [
        "waiting ~120 s for the hourly export budget (60/hour): Prefect global concurrency limit "
        "'mixpanel-export-per-hour' is full (shared by every worker of this server)"
    ]


RIGHT_SECRET = "right-secret-4b9c7e51d2"


def secret_forms(username: str, secret: str) -> dict[str, bytes]:
    """Every spelling in which a secret could be stored: raw, hex, base64, Basic auth's base64."""
    return {
        "raw": secret.encode(),
        "hex": secret.encode().hex().encode(),
        "base64": base64.b64encode(secret.encode()).rstrip(b"="),
        "basic": base64.b64encode(f"{username}:{secret}".encode()).rstrip(b"="),
    }


@pytest.mark.sandbox(secret=RIGHT_SECRET)
def test_no_secret_reaches_the_prefect_database_logs_artifacts_or_destination(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Full runs with the right and a wrong secret, from a saved block: neither secret, in any spelling,
    is in the server's database, a log line, an artifact or a file of the destination."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    from blocks.mixpanel import MixpanelCredentials

    wrong = "wrong-secret-77aa1f3e90"
    credentials_for(sandbox).save("secrets-probe", overwrite=True)
    destination = LocalDestination(path=str(tmp_path / "dest"), create_missing=True)
    (day,) = recent_days(1, sandbox)
    runs = [
        events(credentials=MixpanelCredentials.load("secrets-probe"), destination=destination, from_date=day,
               to_date=day, return_state=True),
        events(credentials=credentials_for(sandbox, service_account_secret=wrong), destination=destination,
               from_date=day, to_date=day, return_state=True),
    ]  # fmt: skip
    assert [r.is_completed() for r in runs] == [True, False]
    with get_client(sync_client=True) as client:
        ids = [r.state_details.flow_run_id for r in runs]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
    texts = [m.encode() for i in ids for m in run_logs(i)]
    texts += [repr((a.data, a.description)).encode() for a in artifacts]
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    stored = [p.read_bytes() for p in database.parent.glob(f"{database.name}*")]  # with -wal and -shm
    stored += [p.read_bytes() for p in (tmp_path / "dest").rglob("*") if p.is_file()]
    assert texts and artifacts and len(stored) > 3
    # the scan reads what the server stored: the run's parameters are in it (not a secret)
    assert any(str(tmp_path / "dest").encode() in s for s in stored[:3])
    username = sandbox.cfg.username
    for secret in (RIGHT_SECRET, wrong):
        for form, needle in secret_forms(username, secret).items():
            assert not [t for t in texts if needle in t], f"the {form} secret is in a log line or artifact"
            assert not [s for s in stored if needle in s], f"the {form} secret is in a stored file"
