"""The sandbox's data-sync surface over real HTTP: late events, user deletions, Query API counts, GDPR API."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import ProjectConfig, SandboxServer, fingerprint
from sandbox.changes import Changes
from sandbox.data import EVENT_NAMES, HOTSHARD, day_start, device_id, user_id
from tests.conftest import StoppedClock

TODAY = date(2024, 3, 10)
DAY = date(2024, 3, 1)
AUTH = ("sandbox-user", "sandbox-secret")
BEARER = {"Authorization": "Bearer sandbox-gdpr-oauth-token"}
TOKEN = {"token": "sandbox-project-token"}
GDPR = "/api/app/data-deletions/v3.0"
UNLIMITED = {
    "max_per_second": None,
    "max_per_hour": None,
    "max_concurrent": None,
    "query_max_per_hour": None,
    "gdpr_max_per_second": None,
}
# Later than every generated event's processing time (March 2024), earlier than "now".
LATE_MS = 1_750_000_000_000
HTTP = httpx.Client(timeout=30)
_INSERT_ID = re.compile(r"^[0-9a-f]{24}$")


def config(**overrides: Any) -> ProjectConfig:
    """This module's project; ``config()`` is also the shared sandbox behind ``sb`` (tests/conftest.py)."""
    return ProjectConfig(**{"today": TODAY, "events_per_day": 2000, "seed": 5, **UNLIMITED, **overrides})


def export(sb: SandboxServer, day: date = DAY, last: date | None = None, **params: Any) -> list[bytes]:
    query = {"from_date": str(day), "to_date": str(last or day), "project_id": 1, **params}
    response = HTTP.get(f"{sb.url}/api/2.0/export", params=query, auth=AUTH)
    assert response.status_code == 200, response.text
    return response.content[:-1].split(b"\n") if response.content else []


def props_of(lines: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line)["properties"] for line in lines]


def ids_of(props: dict[str, Any]) -> set[str]:
    device = props.get("$device_id")
    named = {props.get("distinct_id"), props.get("$user_id"), device, f"$device:{device}" if device else None}
    return {i for i in named if i}


def dedup_counts(lines: list[bytes]) -> Counter[str]:
    """Mixpanel's query-time dedup on (event, distinct_id, time, $insert_id); rows without one all count."""
    counts: Counter[str] = Counter()
    seen: set[tuple[Any, ...]] = set()
    for line in lines:
        record = json.loads(line)
        props = record["properties"]
        if "$insert_id" in props:
            key = (record["event"], props["distinct_id"], props["time"], props["$insert_id"])
            if key in seen:
                continue
            seen.add(key)
        counts[record["event"]] += 1
    return counts


def counts(
    sb: SandboxServer, names: list[str], first: date = DAY, last: date = DAY, **kw: Any
) -> httpx.Response:
    params = {
        "event": json.dumps(names),
        "type": "general",
        "unit": "day",
        "from_date": str(first),
        "to_date": str(last),
        "project_id": 1,
        **kw.pop("params", {}),
    }
    return HTTP.get(f"{sb.url}/api/query/events", params=params, auth=kw.pop("auth", AUTH))


def delete_request(sb: SandboxServer, ids: list[str], **kw: Any) -> httpx.Response:
    body = kw.pop("json", {"distinct_ids": ids, "compliance_type": "GDPR"})
    headers = kw.pop("headers", BEARER)
    return HTTP.post(f"{sb.url}{GDPR}/", params=kw.pop("params", TOKEN), headers=headers, json=body)


def poll(sb: SandboxServer, task_id: str, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", BEARER)
    return HTTP.get(f"{sb.url}{GDPR}/{task_id}", params=kw.pop("params", TOKEN), headers=headers)


def some_user(lines: list[bytes]) -> str:
    return next(p["$user_id"] for p in props_of(lines) if p.get("$user_id"))


def some_anonymous(lines: list[bytes]) -> str:
    return next(p["distinct_id"] for p in props_of(lines) if p["distinct_id"].startswith("$device:"))


# --- late events -----------------------------------------------------------------------------------------


def test_late_events_are_appended_to_their_day_with_their_processing_time(sb: SandboxServer) -> None:
    base = export(sb)
    assert sb.add_events(DAY, 25, processed_at_ms=LATE_MS) == 25
    after = export(sb)
    assert after[: len(base)] == base and len(after) == len(base) + 25
    cfg = sb.cfg
    start = day_start(DAY)
    pool = {user_id(i) for i in range(400)} | {f"$device:{device_id(cfg.seed, i)}" for i in range(400)}
    records = [json.loads(line) for line in after[len(base) :]]
    for record in records:
        props = record["properties"]
        assert next(iter(props)) == "time" and start <= props["time"] < start + 86400
        assert props["mp_processing_time_ms"] == LATE_MS
        assert _INSERT_ID.match(props["$insert_id"])
        assert record["event"] in EVENT_NAMES and props["distinct_id"] in pool
        assert props["$device_id"] in {device_id(cfg.seed, i) for i in range(400)}
    inserted = {p.get("$insert_id") for p in props_of(base)}
    assert len({r["properties"]["$insert_id"] for r in records} - inserted) == 25
    other_day = DAY + timedelta(days=1)
    assert len(export(sb, other_day)) == sb.cfg.events_per_day


def test_late_events_are_found_by_the_processing_time_watermark(sb: SandboxServer) -> None:
    assert export(sb, where=f'number(properties["mp_processing_time_ms"]) > {LATE_MS - 1}') == []
    response = HTTP.post(
        f"{sb.url}/_sandbox/events", json={"day": "2024-03-01", "count": 7, "processed_at_ms": LATE_MS}
    )
    assert response.json() == {"added": 7}
    late = export(sb, where=f'number(properties["mp_processing_time_ms"]) > {LATE_MS - 1}')
    assert len(late) == 7 and late == export(sb)[-7:]
    assert len(export(sb, limit=3, where=f'number(properties["mp_processing_time_ms"]) >= {LATE_MS}')) == 3
    assert HTTP.post(f"{sb.url}/_sandbox/events", json={"day": "2024-03-01", "count": -1}).status_code == 400
    assert HTTP.post(f"{sb.url}/_sandbox/events", json={"day": "03/01", "count": 1}).status_code == 400


def test_late_events_of_a_named_user_name_only_that_user(sb: SandboxServer) -> None:
    """A test puts a user into a day by construction: every added line is that user's, no other is."""
    user = 'late "quoted" user@example.com'
    assert user not in {p["distinct_id"] for p in props_of(export(sb))}
    assert sb.add_events(DAY, 3, processed_at_ms=LATE_MS, user=user) == 3
    response = HTTP.post(f"{sb.url}/_sandbox/events", json={"day": DAY.isoformat(), "count": 2, "user": user})
    assert response.json() == {"added": 2}
    added = props_of(export(sb)[-5:])
    assert [(p["distinct_id"], p["$user_id"]) for p in added] == [(user, user)] * 5
    bad = HTTP.post(f"{sb.url}/_sandbox/events", json={"day": DAY.isoformat(), "count": 1, "user": 7})
    assert bad.status_code == 400 and "user must be a string" in bad.text


def test_late_events_default_to_processed_now_and_respect_the_clock(sb: SandboxServer) -> None:
    before = time.time_ns() // 1_000_000
    sb.add_events("2024-03-02", 3)
    after = time.time_ns() // 1_000_000
    late = props_of(export(sb, date(2024, 3, 2))[-3:])
    assert all(before <= p["mp_processing_time_ms"] <= after for p in late)
    sb.set_processed_until(before - 1)  # Mixpanel has not processed them yet
    try:
        assert len(export(sb, date(2024, 3, 2))) == sb.cfg.events_per_day
    finally:
        sb.set_processed_until(None)


def test_late_events_are_deterministic_per_seed_day_and_position() -> None:
    cfg = config()

    def added(calls: list[int]) -> list[bytes]:
        changes = Changes()
        for n in calls:
            changes.add_events(DAY, n, processed_at_ms=LATE_MS)
        return list(changes.lines(cfg, DAY, []))

    assert added([5, 5]) == added([5, 5])
    assert added([5, 5])[:5] == added([5])
    assert added([5, 5])[5:] != added([5])
    assert added([5]) != list(_with_seed(6, 5))


def _with_seed(seed: int, n: int) -> list[bytes]:
    changes = Changes()
    changes.add_events(DAY, n, processed_at_ms=LATE_MS)
    return list(changes.lines(config(seed=seed), DAY, []))


def test_late_events_of_local_time_projects_use_the_local_epoch() -> None:
    cfg = config(time_mode="local", timezone="America/Los_Angeles", events_per_day=50)
    with SandboxServer(cfg).start() as sb:
        sb.add_events(DAY, 40, processed_at_ms=LATE_MS)
        late = props_of(export(sb)[-40:])
        assert all(day_start(DAY) <= p["time"] < day_start(DAY) + 86400 for p in late)
        # original ID merge is not in play: anonymous ids keep the simplified `$device:` form
        assert all(p["distinct_id"] in (p.get("$user_id"), f"$device:{p['$device_id']}") for p in late)


def test_expected_follows_the_late_events(sb: SandboxServer) -> None:
    before = sb.expected(DAY, DAY)[str(DAY)]
    sb.add_events(DAY, 11, processed_at_ms=LATE_MS)
    after = sb.expected(DAY, DAY + timedelta(days=1))
    served = export(sb)
    assert after[str(DAY)] == dict(zip(("rows", "fingerprint"), fingerprint(served), strict=True))
    assert after[str(DAY)]["rows"] == before["rows"] + 11 and after[str(DAY)] != before
    over_http = HTTP.get(f"{sb.url}/_sandbox/expected", params={"from_date": str(DAY), "to_date": str(DAY)})
    assert over_http.json()[str(DAY)] == after[str(DAY)]
    # events processed by the cut only: the late ones are not there yet
    assert sb.expected(DAY, DAY, processed_until_ms=LATE_MS - 1)[str(DAY)] == before


def test_changes_survive_reset_and_go_with_clear(sb: SandboxServer) -> None:
    sb.add_events(DAY, 4, processed_at_ms=LATE_MS)
    HTTP.post(f"{sb.url}/_sandbox/reset")
    assert len(export(sb)) == sb.cfg.events_per_day + 4
    assert HTTP.post(f"{sb.url}/_sandbox/changes/clear").json() == {"status": "ok"}
    assert len(export(sb)) == sb.cfg.events_per_day


def test_cached_days_leave_the_file_fast_path_once_changed(tmp_path: Path) -> None:
    with SandboxServer(config(cache_dir=tmp_path, events_per_day=300)).start() as sb:
        base = export(sb)
        assert len(base) == 300
        sb.add_events(DAY, 5, processed_at_ms=LATE_MS)
        served = export(sb)
        assert served[:300] == base and len(served) == 305
        assert sb.expected(DAY, DAY)[str(DAY)]["fingerprint"] == fingerprint(served)[1]
        user = some_user(base)
        sb.delete_users([user])
        served = export(sb, DAY, DAY + timedelta(days=1))
        assert all(user not in ids_of(p) for p in props_of(served))
        summary = sb.expected(DAY, DAY + timedelta(days=1))
        assert sum(d["rows"] for d in summary.values()) == len(served)


# --- deletions -------------------------------------------------------------------------------------------


def test_deleted_users_disappear_from_export_expected_and_counts(sb: SandboxServer) -> None:
    sb.add_events(DAY, 300, processed_at_ms=LATE_MS)
    base = export(sb)
    user, anonymous = some_user(base[-300:]), some_anonymous(base)  # one of them sent late events
    gone = {user, anonymous}
    doomed = {line for line, p in zip(base, props_of(base), strict=True) if ids_of(p) & gone}
    assert any(json.loads(line)["properties"]["mp_processing_time_ms"] == LATE_MS for line in doomed)
    response = HTTP.post(f"{sb.url}/_sandbox/delete_users", json={"distinct_ids": sorted(gone)})
    assert response.status_code == 200 and set(response.json()["deleted"]) == gone
    served = export(sb)
    assert served == [line for line in base if line not in doomed]
    anonymous_device = anonymous.removeprefix("$device:")
    assert all(p.get("$device_id") != anonymous_device for p in props_of(served))
    assert all(user not in (p["distinct_id"], p.get("$user_id")) for p in props_of(served))
    rows, fp = fingerprint(served)
    assert sb.expected(DAY, DAY)[str(DAY)] == {"rows": rows, "fingerprint": fp}
    values = counts(sb, sorted(set(EVENT_NAMES))).json()["data"]["values"]
    assert {n: v[str(DAY)] for n, v in values.items()} == {
        n: dedup_counts(served)[n] for n in set(EVENT_NAMES)
    }


# --- query API counts ------------------------------------------------------------------------------------


def test_counts_equal_the_deduplicated_export(sb: SandboxServer) -> None:
    last = DAY + timedelta(days=2)
    names = [*sorted(set(EVENT_NAMES)), HOTSHARD, "Never Sent"]
    response = counts(sb, names, DAY, last)
    assert response.status_code == 200
    body = response.json()
    days = [str(DAY + timedelta(days=i)) for i in range(3)]
    assert body["data"]["series"] == days and body["legend_size"] == len(names)
    assert set(body["data"]["values"]) == set(names)
    raw = 0
    deduplicated = 0
    for day in days:
        lines = export(sb, date.fromisoformat(day))
        expected = dedup_counts(lines)
        assert {n: body["data"]["values"][n][day] for n in names} == {n: expected[n] for n in names}
        raw += len(lines)
        deduplicated += sum(expected.values())
    assert body["data"]["values"]["Never Sent"] == dict.fromkeys(days, 0)
    assert deduplicated < raw  # the data has export duplicates, and the counts do not include them


def test_counts_follow_late_events_and_the_clock(sb: SandboxServer) -> None:
    names = sorted(set(EVENT_NAMES))
    before = counts(sb, names).json()["data"]["values"]
    sb.add_events(DAY, 50, processed_at_ms=LATE_MS)
    after = counts(sb, names).json()["data"]["values"]
    assert sum(v[str(DAY)] for v in after.values()) == sum(v[str(DAY)] for v in before.values()) + 50
    assert after == {n: {str(DAY): dedup_counts(export(sb))[n]} for n in names}
    sb.set_processed_until(LATE_MS - 1)
    try:
        assert counts(sb, names).json()["data"]["values"] == before
    finally:
        sb.set_processed_until(None)


def test_a_count_extra_quirk_counts_more_than_the_export_serves(sb: SandboxServer) -> None:
    names = sorted(set(EVENT_NAMES))
    sb.set_quirks([{"kind": "count_extra", "day": str(DAY), "index": 3}])
    try:
        values = counts(sb, names).json()["data"]["values"]
        expected = dedup_counts(export(sb))
        assert values[names[0]][str(DAY)] == expected[names[0]] + 3
        assert all(values[n][str(DAY)] == expected[n] for n in names[1:])
    finally:
        sb.set_quirks([])


def test_counts_validate_auth_and_parameters(sb: SandboxServer) -> None:
    assert counts(sb, ["Search"], auth=("sandbox-user", "wrong")).status_code == 401
    assert counts(sb, ["Search"], params={"project_id": 2}).status_code == 403
    assert counts(sb, ["Search"], params={"project_id": ""}).status_code == 400
    assert counts(sb, ["Search"], auth=("legacy-secret", "")).status_code == 200
    for bad in (
        {"type": "unique"},
        {"unit": "hour"},
        {"event": "Search"},
        {"event": "[]"},
        {"to_date": "2024-02-01"},
    ):
        response = counts(sb, ["Search"], params=bad)
        assert response.status_code == 400 and "error" in response.json(), bad
    assert counts(sb, ["Search"], last=TODAY + timedelta(days=1)).status_code == 400
    too_many = counts(sb, [f"event {i}" for i in range(101)])
    assert too_many.status_code == 400 and "100" in too_many.json()["error"]
    assert counts(sb, [f"event {i}" for i in range(100)]).status_code == 200


def test_counts_share_the_query_api_limit_and_are_counted() -> None:
    with SandboxServer(config(query_max_per_hour=2, events_per_day=50)).start() as sb:
        statuses = [counts(sb, ["Search"]) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert int(statuses[2].headers["Retry-After"]) >= 1
        stats = sb.stats()
        assert stats["counts_requests"] == 3 and stats["counts_rate_limited"] == 1
        assert stats["counts_responses"] == {"200": 2, "429": 1} and len(stats["counts_request_times"]) == 3
        assert stats["export_requests"] == 0 and stats["engage_requests"] == 0
        engage = HTTP.post(f"{sb.url}/api/query/engage", params={"project_id": 1}, auth=AUTH)
        assert engage.status_code == 429  # one budget for the whole query API


# --- GDPR API --------------------------------------------------------------------------------------------


def test_gdpr_deletion_completes_after_the_configured_polls() -> None:
    with SandboxServer(config(gdpr_polls_until_done=2, events_per_day=300)).start() as sb:
        base = export(sb)
        user, anonymous = some_user(base), some_anonymous(base)
        response = delete_request(sb, [user, anonymous])
        assert response.status_code == 200 and response.json()["status"] == "ok"
        task_id = response.json()["results"]["task_id"]
        assert re.fullmatch(r"[0-9a-f-]{32,36}", task_id)
        for _ in range(2):
            pending = poll(sb, task_id).json()
            assert pending == {
                "status": "ok",
                "results": {"status": "PENDING", "distinct_ids": [user, anonymous]},
            }
            assert export(sb) == base  # Mixpanel has not deleted anything yet
        assert poll(sb, task_id).json()["results"]["status"] == "SUCCESS"
        served = export(sb)
        assert served and all(not ids_of(p) & {user, anonymous} for p in props_of(served))
        assert sb.expected(DAY, DAY)[str(DAY)]["rows"] == len(served) < len(base)
        assert poll(sb, task_id).json()["results"]["status"] == "SUCCESS"
        task = {"distinct_ids": [user, anonymous], "compliance_type": "GDPR", "status": "SUCCESS", "polls": 4}
        assert sb.gdpr_tasks() == {task_id: task}
        assert HTTP.get(f"{sb.url}/_sandbox/gdpr").json() == {task_id: task}
        stats = sb.stats()
        assert stats["gdpr_requests"] == 5 and stats["gdpr_responses"] == {"200": 5}
        assert len(stats["gdpr_request_times"]) == 5


def test_gdpr_rejects_bad_requests_like_mixpanel(sb: SandboxServer) -> None:
    too_many = delete_request(sb, [f"user_{i}" for i in range(2000)])
    assert too_many.status_code == 400 and "1999" in too_many.json()["error"]
    assert delete_request(sb, [f"user_{i}" for i in range(1999)]).status_code == 200
    assert delete_request(sb, ["a"], headers={"Authorization": "Bearer nope"}).status_code == 401
    assert delete_request(sb, ["a"], headers={}).status_code == 401
    assert delete_request(sb, ["a"], params={"token": "other"}).status_code == 403
    assert delete_request(sb, ["a"], params={}).status_code == 400
    assert delete_request(sb, [], json={"distinct_ids": []}).status_code == 400
    assert delete_request(sb, [], json={"distinct_ids": ["a"], "compliance_type": "HIPAA"}).status_code == 400
    assert delete_request(sb, [], json={"distinct_ids": ["a"]}).status_code == 200  # GDPR by default
    not_json = HTTP.post(f"{sb.url}{GDPR}/", params=TOKEN, headers=BEARER, content=b"{oops")
    assert not_json.status_code == 400 and "error" in not_json.json()
    missing = poll(sb, "0123456789abcdef")
    assert missing.status_code == 404 and missing.json() == {"status": "error", "error": "task not found"}
    assert poll(sb, "0123456789abcdef", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert HTTP.delete(f"{sb.url}{GDPR}/x").status_code == 405
    assert HTTP.get(f"{sb.url}/api/app/data-deletions/v2.0/x").status_code == 404


def test_gdpr_fail_next_answers_500(sb: SandboxServer) -> None:
    assert HTTP.post(f"{sb.url}/_sandbox/gdpr", json={"fail_next": 2}).json() == {"fail_next": 2}
    assert [delete_request(sb, ["a"]).status_code for _ in range(3)] == [500, 500, 200]
    assert len(sb.gdpr_tasks()) == 1
    assert HTTP.post(f"{sb.url}/_sandbox/gdpr", json={"fail_next": "x"}).status_code == 400


def test_gdpr_allows_one_request_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = StoppedClock()
    monkeypatch.setattr("sandbox.gdpr_tasks.time", clock)
    with SandboxServer(config(events_per_day=50, gdpr_max_per_second=1)).start() as sb:
        first = delete_request(sb, ["a"])
        assert first.status_code == 200
        second = delete_request(sb, ["b"])
        assert second.status_code == 429 and second.headers["Retry-After"] == "1"
        assert poll(sb, first.json()["results"]["task_id"]).status_code == 429  # one window for POST and GET
        clock.advance(1.05)
        assert poll(sb, first.json()["results"]["task_id"]).status_code == 200
        assert sb.stats()["gdpr_rate_limited"] == 2
