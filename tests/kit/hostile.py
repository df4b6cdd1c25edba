"""Exports of one fixed day from the hostile server (tests/kit/hostile_server.py) into a local folder, and the
shape every refusal's message must have."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from blocks.mixpanel import MixpanelCredentials
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import DayResult, ExportSettings, export_days
from tests.conftest import local_destination
from tests.kit.hostile_server import HostileServer

DAY = date(2024, 1, 2)
ROWS = 40
SECRET = "s3cr3t-proxy-token"


def credentials(server: HostileServer, **overrides: object) -> MixpanelCredentials:
    values: dict[str, object] = {
        "project_id": 1,
        "service_account_username": "sa",
        "service_account_secret": "pw",
        "api_base_url": server.url,
        "retry_backoff_seconds": 0.01,
        "max_attempts": 2,
        "export_requests_per_second": 100,
    }
    return MixpanelCredentials(**(values | overrides))


def run(
    server: HostileServer, root: Path, run_id: str, days: list[date] | None = None, **settings: Any
) -> list[DayResult]:
    with MixpanelClient(credentials(server).api_settings()) as client:
        return export_days(
            client, local_destination(root), days or [DAY], ExportSettings(run_id=run_id, **settings)
        )


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and len(message) < 1200, message
    assert message.rstrip().endswith("."), message
    assert SECRET not in message
