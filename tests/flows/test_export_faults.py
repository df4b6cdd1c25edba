"""One export unit over real HTTP against the sandbox: every Mixpanel failure mode ends with the
day complete and exact, or with the previous data untouched."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxServer
from tasks.errors import BadCredentialsError, MalformedRecordsError, RetriableError
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import DayResult, ExportSettings, export_days
from tests.conftest import (
    assert_day_matches_sandbox,
    credentials_for,
    local_destination,
    read_day,
    recent_days,
    staging_files,
)
from tests.kit.lake import committed


def run(
    server: SandboxServer, root: Path, days: list[date], run_id: str = "r1", **settings: Any
) -> list[DayResult]:
    with MixpanelClient(credentials_for(server).api_settings()) as client:
        return export_days(client, local_destination(root), days, ExportSettings(run_id=run_id, **settings))


def test_a_clean_multi_day_request_lands_every_line_once_in_its_day(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    days = recent_days(3, sandbox)
    results = run(sandbox, tmp_path, days)
    assert [r.day for r in results] == days
    for day in days:
        assert_day_matches_sandbox(tmp_path, sandbox, day)
    assert sandbox.stats()["export_requests"] == 1
    assert staging_files(tmp_path) == []


def test_properties_are_the_exact_source_text(sandbox: SandboxServer, tmp_path: Path) -> None:
    from sandbox import day_lines

    (day,) = recent_days(1, sandbox)
    run(sandbox, tmp_path, [day])
    source = sorted(ln[ln.index(b',"properties":') + 14 : -1].decode() for ln in day_lines(sandbox.cfg, day))
    stored = sorted(read_day(tmp_path, day)["properties"].to_list())
    assert stored == source
    assert any("1180591620717411303424" in p for p in stored), "the sandbox serves big integers (2**70)"
    assert any("東京" in p or "\\u" in p for p in stored)


FAULTS = {
    "dropped connection": [{"kind": "drop_after_bytes", "bytes": 5000}],
    "429 storm": [{"kind": "status", "code": 429, "retry_after": 0.2, "times": 4}],
    "5xx": [{"kind": "status", "code": 503, "body": "upstream unavailable", "times": 2}],
    "terminated early": [{"kind": "terminated_early", "after_lines": 50}],
    "partial last line": [{"kind": "partial_last_line", "after_lines": 80}],
    "slow first byte": [{"kind": "slow_first_byte", "seconds": 0.5}],
}


@pytest.mark.parametrize("faults", FAULTS.values(), ids=FAULTS.keys())
def test_each_failure_mode_ends_with_the_days_complete(
    sandbox: SandboxServer, tmp_path: Path, faults: list[dict[str, Any]]
) -> None:
    days = recent_days(2, sandbox)
    sandbox.add_faults([*faults])  # a new list: add_faults takes list[Fault | dict] (list is invariant)
    results = run(sandbox, tmp_path, days)
    for day in days:
        assert_day_matches_sandbox(tmp_path, sandbox, day)
    retried = sandbox.stats()["export_requests"] - 1
    assert (
        results[0].retries
        == retried
        == (0 if faults[0]["kind"] == "slow_first_byte" else faults[0].get("times", 1))
    )
    assert staging_files(tmp_path) == []


def test_a_split_record_is_rejoined(sandbox: SandboxServer, tmp_path: Path) -> None:
    (day,) = recent_days(1, sandbox)
    sandbox.set_quirks([{"kind": "split_record", "day": day.isoformat(), "index": 17}])
    run(sandbox, tmp_path, [day])
    assert_day_matches_sandbox(tmp_path, sandbox, day)


def test_a_malformed_line_fails_the_day_with_its_line_number_and_keeps_the_old_data(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    days = recent_days(2, sandbox)
    run(sandbox, tmp_path, days, run_id="good")
    sandbox.set_quirks([{"kind": "malformed_line", "day": days[1].isoformat(), "index": 5}])
    first_day_rows = sandbox.expected(days[0], days[0])[days[0].isoformat()]["rows"]
    with pytest.raises(MalformedRecordsError, match=f"first at line {first_day_rows + 6}: invalid JSON"):
        run(sandbox, tmp_path, days, run_id="bad")
    for day in days:
        assert_day_matches_sandbox(tmp_path, sandbox, day)
        assert committed(local_destination(tmp_path), "mp_master_event", day.isoformat()).run_id == "good"
    assert sandbox.stats()["export_requests"] == 2, "a bad record is not retried"
    assert staging_files(tmp_path) == []


def test_a_tolerated_malformed_line_is_kept_in_the_rejects_file(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    (day,) = recent_days(1, sandbox)
    sandbox.set_quirks([{"kind": "malformed_line", "day": day.isoformat(), "index": 3}])
    (result,) = run(sandbox, tmp_path, [day], max_rejected_lines=1)
    assert result.rejected_lines == 1
    assert_day_matches_sandbox(tmp_path, sandbox, day)
    (rejects,) = (tmp_path / "1" / "mp_master_event" / "_rejects").glob("*.jsonl")
    assert '"line":4' in rejects.read_text()


def test_retries_give_up_after_max_attempts_and_leave_the_old_data(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    (day,) = recent_days(1, sandbox)
    run(sandbox, tmp_path, [day], run_id="good")
    sandbox.add_faults([{"kind": "status", "code": 500, "times": 10}])
    with pytest.raises(RetriableError, match="failed 6 times"):
        run(sandbox, tmp_path, [day], run_id="bad")
    assert committed(local_destination(tmp_path), "mp_master_event", day.isoformat()).run_id == "good"
    assert_day_matches_sandbox(tmp_path, sandbox, day)


def test_bad_credentials_fail_once_with_a_clear_message(sandbox: SandboxServer, tmp_path: Path) -> None:
    creds = credentials_for(sandbox, service_account_secret="wrong-secret-123")
    with MixpanelClient(creds.api_settings()) as client, pytest.raises(BadCredentialsError) as info:
        export_days(client, local_destination(tmp_path), recent_days(1, sandbox), ExportSettings(run_id="x"))
    assert "check the service account username, secret and project_id" in str(info.value)
    assert "wrong-secret-123" not in str(info.value)
    assert sandbox.stats()["export_requests"] == 1


def test_rerunning_a_day_is_idempotent(sandbox: SandboxServer, tmp_path: Path) -> None:
    (day,) = recent_days(1, sandbox)
    first = run(sandbox, tmp_path, [day], run_id="one")
    second = run(sandbox, tmp_path, [day], run_id="two")
    assert (first[0].rows, first[0].fingerprint) == (second[0].rows, second[0].fingerprint)
    day_dir = tmp_path / "1" / "mp_master_event" / day.strftime("%Y/%m/%d")
    assert [p.name for p in day_dir.iterdir()] == ["part-two-s2-00000.parquet"]


def test_gzipped_json_lines_on_request(sandbox: SandboxServer, tmp_path: Path) -> None:
    import json

    (day,) = recent_days(1, sandbox)
    run(sandbox, tmp_path, [day], file_format="jsonl.gz")
    manifest = committed(local_destination(tmp_path), "mp_master_event", day.isoformat())
    assert manifest.format == "jsonl.gz" and manifest.files[0].key.endswith(".jsonl.gz")
    import gzip

    lines = gzip.decompress((tmp_path / manifest.files[0].key).read_bytes()).splitlines()
    first = json.loads(lines[0])
    assert set(first) == {
        "device_id",
        "distinct_id",
        "event_name",
        "insert_id",
        "properties",
        "time",
        "user_id",
    }
    assert isinstance(first["properties"], dict) and first["time"].endswith("Z")
    assert len(lines) == manifest.rows
