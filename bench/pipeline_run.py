"""The measured pipeline path: the project's own unit of work, exactly as the events flow runs it."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from bench.common import PROJECT_ID, SECRET, USERNAME, Job, Mismatch, Outcome, check_rows
from blocks.mixpanel import MixpanelCredentials
from tasks.lake.commit import Lake
from tasks.lake.store import LocalStore
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import ExportSettings, export_days


def run(job: Job, out: Path) -> Outcome:
    credentials = MixpanelCredentials(
        project_id=PROJECT_ID,
        service_account_username=USERNAME,
        service_account_secret=SECRET,
        api_base_url=job.url,
    )
    lake = Lake(LocalStore(out), PROJECT_ID)
    settings = ExportSettings(run_id="bench", file_format="parquet")
    with MixpanelClient(credentials.api_settings()) as client:
        (result,) = export_days(client, lake, [date.fromisoformat(job.day)], settings)
    check_rows(job, result.rows)
    # The fingerprint covers every row's event name and exact properties bytes: same data, not just same count.
    if result.fingerprint != job.expected_fingerprint:
        raise Mismatch(f"pipeline: fingerprint {result.fingerprint}, expected {job.expected_fingerprint}")
    return Outcome(rows=result.rows, files=result.files, output_bytes=result.bytes)
