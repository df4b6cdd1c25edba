"""What the Delta and Iceberg suites share: exporting sandbox days into a block, and the truth to compare."""

from __future__ import annotations

import threading
from datetime import date

import polars as pl

from blocks.destinations.base import DestinationBlock
from sandbox import SandboxServer
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import ExportSettings, export_days
from tests.conftest import credentials_for, fingerprint_of_rows


def export(server: SandboxServer, block: DestinationBlock, days: list[date], run_id: str) -> None:
    with MixpanelClient(credentials_for(server).api_settings()) as client:
        export_days(client, block.connect(1), days, ExportSettings(run_id=run_id, identity_mode="simplified"))


def truth(server: SandboxServer, day: date) -> tuple[int, str]:
    want = server.expected(day, day)[day.isoformat()]
    return want["rows"], want["fingerprint"]


def rows_and_fingerprint(frame: pl.DataFrame) -> tuple[int, str]:
    """Recomputed from the ``properties`` text: equal to the sandbox's only if every byte is kept."""
    return frame.height, fingerprint_of_rows(frame)


def race(server: SandboxServer, block: DestinationBlock, day: date, runs: list[str]) -> list[BaseException]:
    """Export ``day`` from several threads at once (each its own run); the errors they ended with."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(runs))

    def run(run_id: str) -> None:
        start.wait()
        try:
            export(server, block, [day], run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
