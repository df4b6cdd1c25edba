"""The object stores' own quirks (the scenarios every destination shares run in
test_destination_scenarios): processes racing on S3, a failing background upload, and the store's errors."""

from __future__ import annotations

import base64
import pickle
import threading
import uuid
from datetime import date
from pathlib import Path

import pytest
import xxhash

from blocks.destinations.base import DestinationBlock
from flows.events import events
from sandbox import SandboxServer
from tasks.errors import BadCredentialsError, FatalError
from tasks.lake.commit import Lake
from tasks.lake.manifest import fingerprint_hex
from tasks.lake.tables import read_parquet
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import ExportSettings, export_days
from tasks.schema import EVENTS_TABLE
from tests.conftest import credentials_for, recent_days
from tests.kit.destinations import export
from tests.kit.forked import run_python
from tests.stores.catalog import Remote, StoreFactory, location_of
from tests.stores.proxy import DROP
from tests.stores.s3 import S3Server, make_s3_destination


def rows_and_fingerprint(lake: Lake, day: date) -> tuple[int, str, str]:
    manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None
    frame = read_parquet(lake, [f.key for f in manifest.files])
    total = sum(
        xxhash.xxh3_64_intdigest(p.encode(), seed=xxhash.xxh3_64_intdigest(n.encode()))
        for n, p in zip(frame["event_name"].to_list(), frame["properties"].to_list(), strict=True)
    )
    return frame.height, fingerprint_hex(total), manifest.run_id


def day_files(lake: Lake, day: date) -> set[str]:
    prefix = lake.data_prefix(EVENTS_TABLE, day.isoformat())
    return {i.key for i in lake.storage.list(prefix) if "/" not in i.key[len(prefix) :]}


RACER = """
import base64, os, pickle, sys, time
from tasks.pipeline.export import ExportSettings, export_days
from tasks.mixpanel.client import MixpanelClient

block, creds, days, run_id, go = pickle.loads(base64.b64decode(sys.argv[1]))
while not os.path.exists(go):  # every racer is forked and waiting before any starts
    time.sleep(0.01)
with MixpanelClient(creds.api_settings()) as client:
    export_days(client, block.connect(1), days, ExportSettings(run_id=run_id, identity_mode="simplified"))
"""


def test_six_processes_racing_one_day_on_s3_end_with_one_complete_version(
    sandbox: SandboxServer, s3_server: S3Server, tmp_path: Path
) -> None:
    """Six workers export the same committed day into one bucket at once: each ends well (a loser
    retries from the winner's version), and the day is one whole version with nothing of the others
    left. (Threads racing one commit run on every store in tests/destinations/test_store_contract.py.)"""
    block = make_s3_destination(s3_server, prefix="raw")

    def store() -> DestinationBlock:
        return block

    days = recent_days(1, sandbox)
    (day,) = days
    export(sandbox, store(), days, "before")
    go = tmp_path / "go"
    racers = [f"racer-{i}" for i in range(6)]
    done: dict[str, object] = {}

    def race(run_id: str) -> None:
        payload = pickle.dumps((store(), credentials_for(sandbox), days, run_id, str(go)))
        done[run_id] = run_python(RACER, base64.b64encode(payload).decode(), timeout=300)

    threads = [threading.Thread(target=race, args=(r,)) for r in racers]
    for thread in threads:
        thread.start()
    go.touch()
    for thread in threads:
        thread.join()
    failed = {r: d.stderr.decode()[-1500:] for r, d in done.items() if d.returncode != 0}  # type: ignore[attr-defined]
    assert len(done) == 6 and not failed, failed
    lake = store().connect(1)
    want = sandbox.expected(day, day)[day.isoformat()]
    rows, fingerprint, run_id = rows_and_fingerprint(lake, day)
    assert (rows, fingerprint) == (want["rows"], want["fingerprint"]) and run_id in racers
    manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None
    assert day_files(lake, day) == {f.key for f in manifest.files}, "nothing of the other versions is left"
    assert not [i.key for i in lake.storage.list("1/_staging/") if "racer-" in i.key]


def test_a_background_upload_that_keeps_failing_retries_the_whole_unit(
    sandbox: SandboxServer, s3_server: S3Server
) -> None:
    from tests.stores.s3 import inject_s3_errors

    days = recent_days(1, sandbox)
    (day,) = days
    block = make_s3_destination(s3_server)
    lake = block.connect(1)
    inject_s3_errors(s3_server, 503, 8)  # more than botocore's 8 attempts: the first upload fails for good
    with MixpanelClient(credentials_for(sandbox).api_settings()) as client:
        (result,) = export_days(client, lake, days, ExportSettings(run_id="retried"))
    want = sandbox.expected(day, day)[day.isoformat()]
    assert (result.rows, result.fingerprint, result.retries) == (want["rows"], want["fingerprint"], 1)
    assert rows_and_fingerprint(lake, day) == (want["rows"], want["fingerprint"], "retried")
    assert not [i for i in lake.storage.list("1/_staging/")], "the failed attempt's staging was removed"


# errors of the store: clear, before any Mixpanel request, and transient ones retried -------------------


def assert_one_sentence(error: BaseException, *mentions: str) -> str:
    message = str(error)
    assert message.endswith(".") and ". " not in message and "\n" not in message, message
    for mention in mentions:
        assert mention in message, f"{mention!r} is not named in: {message}"
    return message


@pytest.mark.usefixtures("prefect_server")
def test_wrong_credentials_stop_the_flow_before_any_mixpanel_request(
    sandbox: SandboxServer, remote: Remote
) -> None:
    bucket = location_of(remote.make())
    with pytest.raises(BadCredentialsError) as caught:
        events(credentials_for(sandbox), remote.make(bucket, bad_credentials=True))
    message = assert_one_sentence(caught.value, bucket, "rejected the credentials")
    assert remote.secret not in message
    assert sandbox.stats()["export_requests"] == 0


@pytest.mark.usefixtures("prefect_server")
def test_a_missing_bucket_stops_the_flow_before_any_mixpanel_request(
    sandbox: SandboxServer, remote: Remote
) -> None:
    missing = f"mp-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FatalError) as caught:
        events(credentials_for(sandbox), remote.make(missing))
    assert_one_sentence(caught.value, missing, "does not exist", "create it")
    assert sandbox.stats()["export_requests"] == 0


def test_transient_store_errors_are_retried_and_the_days_land(sandbox: SandboxServer, remote: Remote) -> None:
    days = recent_days(2, sandbox)
    block = remote.make()
    export(sandbox, block, days, "steady")
    failed = remote.proxy.failed
    remote.proxy.fail(503, 2, after=10)  # in the middle of the second run: uploads, manifest or cleanup
    export(sandbox, block, days, "flaky")
    remote.proxy.fail(DROP, 1, after=3)  # and a dropped connection in a third
    export(sandbox, block, days, "dropped")
    assert remote.proxy.failed - failed == 3
    lake = block.connect(1)
    for day in days:
        want = sandbox.expected(day, day)[day.isoformat()]
        assert rows_and_fingerprint(lake, day) == (want["rows"], want["fingerprint"], "dropped")
        manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
        assert manifest is not None and day_files(lake, day) == {f.key for f in manifest.files}


def test_a_run_that_loses_the_race_for_a_day_retries_from_the_new_version(
    sandbox: SandboxServer, store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    days = recent_days(1, sandbox)
    (day,) = days
    export(sandbox, store(), days, "before")
    real_commit = Lake.commit
    raced: list[str] = []

    def commit_after_a_rival(self, stage, partition, manifest, expected=None):  # type: ignore[no-untyped-def]
        if manifest.run_id == "loser" and not raced:
            raced.append(partition)  # another run commits the same day first, from the same base
            monkeypatch.setattr(Lake, "commit", real_commit)
            export(sandbox, store(), days, "winner")
            monkeypatch.setattr(Lake, "commit", commit_after_a_rival)
        return real_commit(self, stage, partition, manifest, expected)

    monkeypatch.setattr(Lake, "commit", commit_after_a_rival)
    with MixpanelClient(credentials_for(sandbox).api_settings()) as client:
        (result,) = export_days(client, store().connect(1), days, ExportSettings(run_id="loser"))
    monkeypatch.undo()
    assert raced == [day.isoformat()] and result.retries == 1
    lake = store().connect(1)
    want = sandbox.expected(day, day)[day.isoformat()]
    assert rows_and_fingerprint(lake, day) == (want["rows"], want["fingerprint"], "loser")
    manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None
    assert day_files(lake, day) == {f.key for f in manifest.files}, (
        "nothing of the winner's version or the lost try"
    )
    assert lake.storage.list("1/_staging/") == []
