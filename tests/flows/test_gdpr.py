"""GDPR deletions on the sandbox: Mixpanel's API, then the whole identity cluster gone from every table."""

from __future__ import annotations

import base64
import json
import pickle
import signal
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from blocks.gdpr import MixpanelGdprCredentials
from flows.backfill import backfill
from flows.events import events
from flows.gdpr import gdpr
from flows.identity import identity
from flows.people import people
from sandbox import SandboxServer
from tasks.errors import BadRequestError
from tasks.pipeline.exclude import event_rows_of, id_rows_of
from tasks.schema import EVENTS_TABLE, MAPPINGS_TABLE, PEOPLE_TABLE
from tasks.sync.gdpr import cluster_mappings
from tasks.sync.registry import EDGE_IDS, audit_prefix, cluster_members, id_hash, load_registry
from tests.conftest import credentials_for, fingerprint_of_rows, recent_days
from tests.kit.forked import run_python
from tests.kit.sync import Three, day_frame, edges_frame, merged_user, three_destinations, tokens, whole_table
from tests.stores.s3 import S3Server

pytestmark = pytest.mark.usefixtures("prefect_server")
DAYS = 6


@pytest.fixture
def synced(sandbox: SandboxServer, tmp_path: Path, s3_server: S3Server) -> tuple[Three, list[date]]:
    """Six days, the people table and the identity mappings in a local folder, S3 and DuckDB."""
    kit = three_destinations(tmp_path, s3_server)
    days = recent_days(DAYS, sandbox)
    credentials = credentials_for(sandbox)
    for block in kit.blocks:
        events(credentials, block, from_date=days[0], to_date=days[-1])
        people(credentials, block)
        identity(credentials, block)
    return kit, days


def rows_of_cluster(kit: Three, days: list[date], cluster: set[str]) -> dict[str, int]:
    """Rows of any cluster id left, per destination and table (must all be 0 after the purge)."""
    found: dict[str, int] = {}
    for dest in kit.connected():
        where = dest.describe("")
        found[f"{where} events"] = sum(day_frame(dest, d).filter(event_rows_of(cluster)).height for d in days)
        found[f"{where} edges"] = sum(
            edges_frame(dest, d).filter(id_rows_of(cluster, EDGE_IDS)).height
            for d in days
            if edges_frame(dest, d).height
        )
        people_rows = whole_table(dest, PEOPLE_TABLE)
        found[f"{where} people"] = people_rows.filter(pl.col("distinct_id").is_in(list(cluster))).height
        mappings = whole_table(dest, MAPPINGS_TABLE)
        found[f"{where} mappings"] = mappings.filter(
            pl.col("distinct_id").is_in(list(cluster)) | pl.col("resolved_distinct_id").is_in(list(cluster))
        ).height
    ids = sorted(cluster)
    marks = ", ".join("?" for _ in ids)
    devices = [i.removeprefix("$device:") for i in ids]
    (found["duckdb events"],) = kit.duckdb_rows(
        f"SELECT count(*) FROM mp_master_event WHERE distinct_id IN ({marks}) OR user_id IN ({marks}) "
        f"OR device_id IN ({marks})",
        ids + ids + devices,
    )[0]
    (found["duckdb people"],) = kit.duckdb_rows(
        f"SELECT count(*) FROM mp_people_data WHERE distinct_id IN ({marks})", ids
    )[0]
    (found["duckdb mappings"],) = kit.duckdb_rows(
        f"SELECT count(*) FROM mp_identity_mappings_data WHERE distinct_id IN ({marks}) "
        f"OR resolved_distinct_id IN ({marks})",
        ids + ids,
    )[0]
    return found


def assert_days_consistent(kit: Three, days: list[date]) -> None:
    """Manifests still tell the truth: rows and fingerprint recomputed from the files."""
    for dest in kit.connected():
        for day in days:
            manifest = dest.manifest(EVENTS_TABLE, day.isoformat())
            assert manifest is not None
            frame = day_frame(dest, day)
            assert (frame.height, fingerprint_of_rows(frame)) == (manifest.rows, manifest.fingerprint)


def test_a_deleted_user_leaves_no_row_of_its_cluster_anywhere(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    kit, days = synced
    credentials = credentials_for(sandbox)
    user, cluster = merged_user(kit.connected()[0])
    assert any(i.startswith("$device:") for i in cluster), "the user has merged devices"
    before = rows_of_cluster(kit, days, cluster)
    assert before["duckdb events"] > 0 and before["duckdb people"] == 1

    result = gdpr(credentials, kit.blocks, gdpr_credentials=tokens(sandbox), distinct_ids=[user])

    assert set(rows_of_cluster(kit, days, cluster).values()) == {0}, rows_of_cluster(kit, days, cluster)
    assert_days_consistent(kit, days)
    (task,) = sandbox.gdpr_tasks().values()
    assert task["distinct_ids"] == [user] and task["compliance_type"] == "GDPR"
    destinations = result["destinations"]
    assert isinstance(destinations, list)
    assert [r["ids"] for r in destinations] == [1, 1, 1]

    for dest in kit.connected():
        entry = load_registry(dest).deletions[user]
        assert entry.task_id is not None and entry.purged_at is not None and set(entry.cluster) == cluster
        audits = dest.storage.list(audit_prefix(dest))
        assert len(audits) == 1
        text = (dest.storage.get_bytes(audits[0].key) or b"").decode()
        assert all(i not in text for i in cluster), "the audit record holds no raw id"
        record = json.loads(text)
        assert record["ids"] == 1 and record["cluster_ids"] == len(cluster)
        assert record["id_sha256"] == [id_hash(user)]
        removed = record["rows_removed"]
        assert sum(removed[EVENTS_TABLE].values()) == before[f"{dest.describe('')} events"]
        assert removed[PEOPLE_TABLE] == 1 and removed[MAPPINGS_TABLE] == len(cluster)

    # Mixpanel has not finished its deletion yet and still serves the user: a backfill leaves them out
    for block in kit.blocks:
        backfill(credentials, days[0], block, to_date=days[-1], force=True)
        people(credentials, block)
        identity(credentials, block)
    assert set(rows_of_cluster(kit, days, cluster).values()) == {0}
    assert_days_consistent(kit, days)

    # later runs poll Mixpanel until the task is done; the purge is not repeated
    gdpr(credentials, kit.blocks, gdpr_credentials=tokens(sandbox))
    gdpr(credentials, kit.blocks, gdpr_credentials=tokens(sandbox))
    for dest in kit.connected():
        assert load_registry(dest).deletions[user].status == "SUCCESS"
        assert len(dest.storage.list(audit_prefix(dest))) == 1


def test_ids_dropped_in_the_inbox_are_purged_without_asking_mixpanel(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    kit, days = synced
    local = kit.connected()[0]
    user, cluster = merged_user(local)
    local.storage.put_bytes("1/_state/gdpr/inbox/request-17.txt", f"# ticket 17\n{user}\n".encode())

    gdpr(credentials_for(sandbox), kit.blocks)

    assert set(rows_of_cluster(kit, days, cluster).values()) == {0}
    assert sandbox.gdpr_tasks() == {}, "user-supplied ids are purged here only"
    assert local.storage.list("1/_state/gdpr/inbox/") == []
    assert all(load_registry(d).deletions[user].source == "user" for d in kit.connected())


def test_ids_for_mixpanel_without_its_tokens_are_refused(sandbox: SandboxServer, tmp_path: Path) -> None:
    from blocks.destinations.local import LocalDestination

    with pytest.raises(BadRequestError, match="no gdpr_credentials block was given"):
        gdpr(credentials_for(sandbox), [LocalDestination(path=str(tmp_path))], distinct_ids=["someone"])
    assert not (tmp_path / "1" / "_state" / "gdpr").exists()


KILLER = """
import base64, os, pickle, signal, sys
from tasks.lake import commit as objectstore
from tasks.sync.registry import load_registry, save_registry
from tasks.sync.purge import PurgeScope, purge_destination

block, user, cluster = pickle.loads(base64.b64decode(sys.argv[1]))
dest = block.connect(1)
registry = load_registry(dest)
registry.register([user], "user", "GDPR")
registry.deletions[user].cluster = tuple(sorted(cluster))
save_registry(dest, registry)

real, calls = objectstore.Lake._publish, []
def publish_then_die(self, staged, folder, run):  # the third day: files moved, manifest not switched
    published = real(self, staged, folder, run)
    calls.append(folder)
    if len(calls) == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return published
objectstore.Lake._publish = publish_then_die
purge_destination(dest, PurgeScope(frozenset(cluster), frozenset(cluster), {}), "killed")
"""


def test_a_crash_during_a_purge_leaves_each_day_purged_or_untouched(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    kit, days = synced
    user, cluster = merged_user(kit.connected()[0])
    for block in (kit.local, kit.s3):
        lake = block.connect(1)
        before = {d: lake.storage.get_bytes(lake.manifest_key(EVENTS_TABLE, d.isoformat())) for d in days}
        payload = base64.b64encode(pickle.dumps((block, user, cluster))).decode()
        done = run_python(KILLER, payload, timeout=120)
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]

        purged = untouched = 0
        for day in days:
            raw = lake.storage.get_bytes(lake.manifest_key(EVENTS_TABLE, day.isoformat()))
            if raw == before[day]:
                untouched += 1
            else:
                assert day_frame(lake, day).filter(event_rows_of(cluster)).height == 0
                purged += 1
        assert purged == 2 and untouched == DAYS - 2, (purged, untouched)

    gdpr(credentials_for(sandbox), [kit.local, kit.s3])

    for lake in kit.connected()[:2]:
        assert all(day_frame(lake, d).filter(event_rows_of(cluster)).height == 0 for d in days)
        for day in days:
            manifest = lake.manifest(EVENTS_TABLE, day.isoformat())
            assert manifest is not None
            listed = {f.key for f in manifest.files}
            folder = lake.data_prefix(EVENTS_TABLE, day.isoformat())
            on_store = {i.key for i in lake.storage.list(folder) if "/" not in i.key[len(folder) :]}
            assert on_store == listed, "the killed run's files were removed"
    assert_days_consistent(Three(kit.local, kit.s3, kit.duckdb), days)


def test_the_gdpr_client_paces_retries_and_names_a_bad_token(sandbox: SandboxServer) -> None:
    import httpx

    from tasks.errors import BadCredentialsError
    from tasks.mixpanel.gdpr_api import GdprClient

    credentials = credentials_for(sandbox)
    httpx.post(f"{sandbox.url}/_sandbox/gdpr", json={"fail_next": 2}).raise_for_status()
    with GdprClient(credentials.api_settings(), tokens(sandbox).settings(), notify=lambda _: None) as client:
        first = client.submit(["a@example.com"], "GDPR")  # two 500s, then the task
        second = client.submit(["b@example.com"], "CCPA")  # right after: paced to 1 request per second
        assert client.status(first) == "PENDING" and client.status(first) == "SUCCESS"
    stats = sandbox.stats()
    assert stats["gdpr_requests"] == 2 + 2 + 2 and stats["gdpr_rate_limited"] == 0
    assert {t["compliance_type"] for t in sandbox.gdpr_tasks().values()} == {"GDPR", "CCPA"}
    assert second in sandbox.gdpr_tasks()

    wrong = MixpanelGdprCredentials(
        project_token=sandbox.cfg.project_token, oauth_token="expired-oauth-token"
    )
    with (
        GdprClient(credentials.api_settings(), wrong.settings()) as client,
        pytest.raises(BadCredentialsError) as error,
    ):
        client.submit(["c@example.com"], "GDPR")
    assert "renew it" in str(error.value) and "expired-oauth-token" not in str(error.value)


def test_rows_an_earlier_export_brings_back_are_purged_by_the_next_run(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    """An export that began before the id was registered commits after the purge: the next run finds
    the changed day (its version was not checked yet) and purges it; the other days are not read."""
    from tasks.mixpanel.client import MixpanelClient
    from tasks.pipeline.export import ExportSettings, export_days

    kit, days = synced
    credentials = credentials_for(sandbox)
    user, cluster = merged_user(kit.connected()[0])
    gdpr(credentials, [kit.local, kit.s3], distinct_ids=[user], submit_to_mixpanel=False)
    late = [d for d in days if day_frame(kit.connected()[0], d).height][-1]
    for block in (kit.local, kit.s3):  # the export's settings were read before the id was registered
        with MixpanelClient(credentials.api_settings()) as client:
            export_days(
                client, block.connect(1), [late], ExportSettings(run_id="stale", identity_mode="simplified")
            )
    dests = kit.connected()[:2]
    assert all(day_frame(d, late).filter(event_rows_of(cluster)).height for d in dests), "the user came back"
    before = [
        {d: x.storage.get_bytes(x.manifest_key(EVENTS_TABLE, d.isoformat())) for d in days} for x in dests
    ]

    gdpr(credentials, [kit.local, kit.s3])

    for dest, old in zip(dests, before, strict=True):
        assert all(day_frame(dest, d).filter(event_rows_of(cluster)).height == 0 for d in days)
        new = {d: dest.storage.get_bytes(dest.manifest_key(EVENTS_TABLE, d.isoformat())) for d in days}
        assert {d for d in days if new[d] != old[d]} == {late}, "only the day written since was rewritten"
        audits = sorted(i.key for i in dest.storage.list(audit_prefix(dest)))
        assert len(audits) == 2
        record = json.loads(dest.storage.get_bytes(audits[-1]) or b"{}")
        assert record["ids"] == 0 and list(record["rows_removed"][EVENTS_TABLE]) == [late.isoformat()]


def test_mixpanel_refusing_the_token_does_not_stop_the_purge(sandbox: SandboxServer, tmp_path: Path) -> None:
    from blocks.destinations.local import LocalDestination
    from tasks.errors import BadCredentialsError

    credentials = credentials_for(sandbox)
    block = LocalDestination(path=str(tmp_path))
    days = recent_days(2, sandbox)
    events(credentials, block, from_date=days[0], to_date=days[-1])
    identity(credentials, block)
    lake = block.connect(1)
    user, cluster = merged_user(lake)
    wrong = MixpanelGdprCredentials(
        project_token=sandbox.cfg.project_token, oauth_token="expired-oauth-token"
    )

    with pytest.raises(BadCredentialsError, match=r"renew it.*The destinations were purged") as error:
        gdpr(credentials, [block], gdpr_credentials=wrong, distinct_ids=[user])

    assert "expired-oauth-token" not in str(error.value)
    assert all(day_frame(lake, d).filter(event_rows_of(cluster)).height == 0 for d in days)
    assert load_registry(lake).deletions[user].task_id is None and sandbox.gdpr_tasks() == {}
    gdpr(credentials, [block], gdpr_credentials=tokens(sandbox))  # renewed: the id is sent now
    assert load_registry(lake).deletions[user].task_id in sandbox.gdpr_tasks()


DIE_AFTER_FIRST_DAY = """
import base64, os, pickle, signal, sys
from tasks.lake import commit as objectstore
from tasks.sync.gdpr import RunIds, purge
from tasks.sync.registry import load_registry, save_registry

block, user = pickle.loads(base64.b64decode(sys.argv[1]))
dest = block.connect(1)
registry = load_registry(dest)
registry.register([user], "user", "GDPR")
save_registry(dest, registry)

real = objectstore.Lake.commit
def commit_then_die(self, stage, partition, manifest, expected=None):  # the first purged day, committed
    committed = real(self, stage, partition, manifest, expected)
    os.kill(os.getpid(), signal.SIGKILL)
    return committed
objectstore.Lake.commit = commit_then_die
purge(dest, load_registry(dest), "simplified", RunIds("killed", None), print)
"""


@pytest.mark.sandbox(today=date(2024, 3, 10))
def test_a_purge_completed_after_a_crash_audits_the_rows_of_both_runs(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from blocks.destinations.local import LocalDestination

    credentials = credentials_for(sandbox)
    block = LocalDestination(path=str(tmp_path / "data"), create_missing=True)
    days = [date(2024, 3, 5), date(2024, 3, 6), date(2024, 3, 7)]
    events(credentials, block, from_date=days[0], to_date=days[-1])
    lake = block.connect(1)
    frames = {d.isoformat(): day_frame(lake, d) for d in days}
    every = pl.concat(frames.values())["distinct_id"].drop_nulls().value_counts(sort=True)
    user = next(
        u for u in every["distinct_id"] if all(f.filter(event_rows_of({u})).height for f in frames.values())
    )
    cluster = set(cluster_members([user], cluster_mappings(lake, "simplified"))[user])
    held = {day: frame.filter(event_rows_of(cluster)).height for day, frame in frames.items()}

    payload = base64.b64encode(pickle.dumps((block, user))).decode()
    done = run_python(DIE_AFTER_FIRST_DAY, payload, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert lake.storage.list(audit_prefix(lake)) == [], "killed before its audit"
    assert sum(day_frame(lake, d).filter(event_rows_of(cluster)).height == 0 for d in days) == 1

    gdpr(credentials, [block])

    assert all(day_frame(lake, d).filter(event_rows_of(cluster)).height == 0 for d in days)
    (audit,) = lake.storage.list(audit_prefix(lake))
    record = json.loads(lake.storage.get_bytes(audit.key) or b"{}")
    assert record["rows_removed"][EVENTS_TABLE] == held, "the rows the killed run removed are audited too"
    assert record["ids"] == 1 and record["id_sha256"] == [id_hash(user)]


@pytest.mark.sandbox(today=date(2024, 3, 10))
def test_a_deleted_user_never_lands_in_a_destination_added_later(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """The registry belongs to the project: a destination created after the purge never receives
    the user's events or profile, and its own registry receives the project's ids."""
    from blocks.destinations.local import LocalDestination

    credentials = credentials_for(sandbox)
    days = [date(2024, 3, 5), date(2024, 3, 6)]
    first = LocalDestination(path=str(tmp_path / "data"), create_missing=True)
    events(credentials, first, from_date=days[0], to_date=days[-1])
    people(credentials, first)
    lake = first.connect(1)
    profiles = set(whole_table(lake, PEOPLE_TABLE)["distinct_id"].to_list())
    user = next(u for u in day_frame(lake, days[0])["distinct_id"].to_list() if u in profiles)
    gdpr(credentials, [first], distinct_ids=[user], submit_to_mixpanel=False)
    cluster = set(load_registry(lake).deletions[user].cluster) | {user}

    later = LocalDestination(path=str(tmp_path / "later"), create_missing=True)
    events(credentials, later, from_date=days[0], to_date=days[-1])
    people(credentials, later)
    identity(credentials, later)

    lake = later.connect(1)
    assert all(day_frame(lake, d).height for d in days)
    assert all(day_frame(lake, d).filter(event_rows_of(cluster)).height == 0 for d in days)
    assert whole_table(lake, PEOPLE_TABLE).filter(id_rows_of(cluster, ("distinct_id",))).height == 0
    assert whole_table(lake, MAPPINGS_TABLE).filter(id_rows_of(cluster, ("distinct_id",))).height == 0
    assert user in load_registry(lake).deletions, "the destination's first export copied the registry"
