"""The sandbox's Engage (user profiles) API over real HTTP: paging, filters, fingerprints, faults and limits."""

from __future__ import annotations

import json
import threading
import time
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest
import xxhash

from sandbox import ProjectConfig, SandboxServer, day_lines, people_fingerprint, profile_lines
from sandbox.__main__ import build_parser, config_from_args
from sandbox.people import event_users, people_model, user_key
from sandbox.people_where import WhereError, parse_atoms, parse_people_where

TODAY = date(2024, 3, 10)
AUTH = ("sandbox-user", "sandbox-secret")
PATHS = ("/api/query/engage", "/api/2.0/engage")
UNLIMITED = {"max_per_second": None, "max_per_hour": None, "query_max_per_hour": None}
HTTP = httpx.Client(timeout=30)
_DECODER = json.JSONDecoder()


def config(**overrides: Any) -> ProjectConfig:
    """This module's project; ``config()`` is also the shared sandbox behind ``sb`` (tests/conftest.py)."""
    return ProjectConfig(**{"today": TODAY, "anonymous_profiles": 6, **UNLIMITED, **overrides})


def engage(sb: SandboxServer, path: str = PATHS[0], auth: Any = AUTH, **form: Any) -> httpx.Response:
    data = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in form.items()}
    return HTTP.post(f"{sb.url}{path}", params={"project_id": 1}, data=data, auth=auth)


def served(response: httpx.Response) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """(response head, [(distinct_id, exact `$properties` bytes)]) read from the raw body text."""
    text = response.content.decode()
    head = json.loads(text)
    pos = text.index('"results":[') + len('"results":[')
    rows: list[tuple[str, bytes]] = []
    while text[pos] != "]":
        entry, end = _DECODER.raw_decode(text, pos)
        raw = text[pos:end]
        props = raw[raw.index('"$properties":') + len('"$properties":') : -1]
        assert json.loads(props) == entry["$properties"]
        rows.append((entry["$distinct_id"], props.encode()))
        pos = end + (text[end] == ",")
    return head, rows


def download(
    sb: SandboxServer, page_size: int = 7, path: str = PATHS[0], **form: Any
) -> list[dict[str, Any]]:
    """Every page of one query, following Mixpanel's protocol: keep going while a page is full."""
    pages: list[dict[str, Any]] = []
    session: dict[str, Any] = {}
    while True:
        response = engage(sb, path, page=len(pages), page_size=page_size, **session, **form)
        assert response.status_code == 200, response.text
        head, rows = served(response)
        pages.append({**head, "rows": rows})
        session = {"session_id": head["session_id"]}
        if len(rows) < page_size:
            return pages


def client_fingerprint(rows: list[tuple[str, bytes]]) -> str:
    total = 0
    for distinct, props in rows:
        total += xxhash.xxh3_64_intdigest(props, seed=xxhash.xxh3_64_intdigest(distinct.encode()))
    return f"{total & 0xFFFFFFFFFFFFFFFF:016x}"


def all_rows(pages: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    return [row for page in pages for row in page["rows"]]


# --- profiles -----------------------------------------------------------------------------------------


def test_profile_ids_are_the_users_of_the_events() -> None:
    cfg = config()
    seen: set[str] = set()
    for offset in range(7):
        for line in day_lines(cfg, TODAY - timedelta(days=offset)):
            seen.add(json.loads(line)["properties"]["distinct_id"])
    ids = [d for d, _ in profile_lines(cfg, 0, 10**6)]
    users = [d for d in ids if d.startswith("user_")]
    assert len(users) == event_users(cfg) == 40  # 100 devices, 3 in 5 identified, 2 devices per user
    assert set(users) == {d for d in seen if d.startswith("user_")}
    assert len(ids) == len(set(ids)) == 46
    assert all(d.startswith("$device:") and d in seen for d in ids[40:])  # anonymous devices seen in events


def test_profiles_look_like_mixpanel_profiles() -> None:
    rows = profile_lines(config(profiles=3000, anonymous_profiles=0), 0, 3000)
    texts = [props for _, props in rows]
    props = [json.loads(t) for t in texts]
    assert [d for d, _ in rows[:4]] == [f"user_{k}@example.com" for k in (0, 1, 2, 3)]
    assert rows[4][0] == "user_5@example.com" and user_key(4) == 5
    assert all(p["$email"] == d for (d, _), p in zip(rows, props, strict=True))
    assert all(
        datetime.fromisoformat(p["$last_seen"]) >= datetime.fromisoformat(p["$created"]) for p in props
    )
    cities = {p["$city"] for p in props}
    assert {"Zürich", "東京", "🏙️ Metropolis", None} <= cities
    assert any(b"\\u" in t for t in texts) and any("東京".encode() in t for t in texts)
    assert all(p["account_id"] > 2**64 and isinstance(p["orders"], str) for p in props)
    assert all(isinstance(p["preferences"]["limits"], dict) and isinstance(p["tags"], list) for p in props)
    assert any(len(str(p["lifetime_value"])) >= 17 for p in props)
    assert any(len(p.get("bio", "")) > 5000 for p in props)
    assert profile_lines(config(profiles=3000), 100, 103) == rows[100:103]  # deterministic per index


def test_million_profiles_are_generated_lazily_and_fast() -> None:
    cfg = config(profiles=1_000_000, anonymous_profiles=0)
    assert people_model(cfg).total == 1_000_000
    started = time.thread_time()  # CPU, not wall: a busy machine does not make generation slower
    rows = profile_lines(cfg, 999_000, 10**7)
    assert len(rows) == 1000 and rows[-1][0] == f"user_{user_key(999_999)}@example.com"
    rows = profile_lines(cfg, 0, 20_000)
    assert time.thread_time() - started < 2.0  # ~100k profiles/s on a laptop


# --- paging -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_paging_returns_every_profile_once(sb: SandboxServer, path: str) -> None:
    pages = download(sb, path=path)
    ids = [d for d, _ in all_rows(pages)]
    assert ids == [d for d, _ in profile_lines(sb.cfg, 0, 100)]
    assert len(pages) == 7 and [len(p["rows"]) for p in pages] == [7] * 6 + [4]
    assert pages[0]["total"] == 46 and all("total" not in p for p in pages[1:])
    assert {p["session_id"] for p in pages} == {pages[0]["session_id"]}
    assert all(p["status"] == "ok" and p["page_size"] == 7 for p in pages)
    assert [p["page"] for p in pages] == list(range(7))


def test_expected_matches_a_client_side_fingerprint(sb: SandboxServer) -> None:
    rows = all_rows(download(sb, page_size=10))
    expected = sb.people_expected()
    assert expected == {"rows": 46, "fingerprint": client_fingerprint(rows)}
    assert HTTP.get(f"{sb.url}/_sandbox/people_expected").json() == expected
    assert people_fingerprint(sb.cfg) == expected


def test_session_rules(sb: SandboxServer) -> None:
    head = engage(sb, page_size=5).json()
    assert engage(sb, page=1, page_size=5, session_id="nope").json() == {"error": "invalid session_id"}
    assert engage(sb, page=1, page_size=5).status_code == 400
    beyond = engage(sb, page=50, page_size=5, session_id=head["session_id"])
    assert beyond.status_code == 200 and beyond.json()["results"] == []
    assert engage(sb, page_size=5).json()["session_id"] == head["session_id"]  # deterministic
    assert engage(sb, page_size=0).status_code == 400
    assert engage(sb, page_size=10_001).status_code == 400
    assert len(engage(sb).json()["results"]) == 46  # default page_size 1000


def test_gzip_and_identity_serve_the_same_json(sb: SandboxServer) -> None:
    url = f"{sb.url}{PATHS[0]}"
    gz = HTTP.post(url, params={"project_id": 1}, auth=AUTH, headers={"Accept-Encoding": "gzip"})
    plain = HTTP.post(url, params={"project_id": 1}, auth=AUTH, headers={"Accept-Encoding": "identity"})
    assert gz.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert gz.content == plain.content


# --- filters ------------------------------------------------------------------------------------------


def test_where_filters_and_expected_follow_it(sb: SandboxServer) -> None:
    where = 'properties["plan"] == "pro" and defined(properties["$city"])'
    rows = all_rows(download(sb, where=where))
    props = [json.loads(p) for _, p in rows]
    assert rows and all(p["plan"] == "pro" and p["$city"] is not None for p in props)
    everything = [json.loads(p) for _, p in profile_lines(sb.cfg, 0, 100)]
    assert len(rows) == sum(p["plan"] == "pro" and p["$city"] is not None for p in everything)
    expected = {"rows": len(rows), "fingerprint": client_fingerprint(rows)}
    assert sb.people_expected(where=where) == expected
    response = HTTP.get(f"{sb.url}/_sandbox/people_expected", params={"where": where})
    assert response.json() == expected
    bad = engage(sb, where='properties["plan"] != "pro"')
    assert bad.status_code == 400 and bad.json() == {"error": "invalid where expression"}


def test_output_properties_keep_exact_text_in_served_order(sb: SandboxServer) -> None:
    wanted = ["account_id", "$email", "$city", "missing"]
    rows = all_rows(download(sb, output_properties=wanted))
    assert len(rows) == 46
    first = rows[0][1].decode()
    assert list(json.loads(first)) == ["$email", "$city", "account_id"]
    members = dict(people_model(sb.cfg).profile(0)[1])
    assert first == "{" + ",".join(members[k] for k in ("$email", "$city", "account_id")) + "}"
    assert sb.people_expected(output_properties=wanted) == {
        "rows": 46,
        "fingerprint": client_fingerprint(rows),
    }
    query = {"output_properties": json.dumps(wanted)}
    assert HTTP.get(f"{sb.url}/_sandbox/people_expected", params=query).json()["rows"] == 46


def test_distinct_ids_select_only_those_profiles(sb: SandboxServer) -> None:
    anonymous = profile_lines(sb.cfg, 45, 46)[0][0]
    ids = [
        "user_7@example.com",
        "user_4@example.com",
        anonymous,
        "user_1@example.com",
        "stranger",
        "user_9@example.com",
    ]
    head, rows = served(engage(sb, distinct_ids=ids))
    assert [d for d, _ in rows] == ["user_1@example.com", "user_7@example.com", anonymous]  # served order
    assert head["total"] == 3
    assert sb.people_expected(distinct_ids=ids)["fingerprint"] == client_fingerprint(rows)


def test_the_people_where_parser() -> None:
    atoms = parse_atoms('(properties["note"] == "salt and pepper") and defined( properties["a\\"b"] )')
    assert [(a.name, a.value) for a in atoms] == [("note", "salt and pepper"), ('a"b', None)]
    pairs = [("n", '"n":"5"'), ("x", '"x":null'), ("m", '"m":5')]
    assert parse_people_where('properties["n"] == "5" and defined(properties["m"])')(pairs)
    assert not parse_people_where('defined(properties["x"])')(pairs)  # null counts as not set
    assert not parse_people_where('properties["m"] == "5"')(pairs)  # typed comparison
    for bad in (
        "",
        'properties["a"] == 5',
        'properties["a"] or defined(properties["b"])',
        "(defined(x)",
        "✓",
    ):
        with pytest.raises(WhereError):
            parse_atoms(bad)


# --- faults, limits and auth --------------------------------------------------------------------------


def test_402_plan_fault_and_page_targeted_faults(sb: SandboxServer) -> None:
    sb.add_faults([{"kind": "status", "code": 402, "endpoint": "engage"}])
    export = HTTP.get(
        f"{sb.url}/api/2.0/export",
        params={"from_date": "2024-03-01", "to_date": "2024-03-01"},
        auth=("legacy-secret", ""),
    )
    assert export.status_code == 200  # engage faults never hit export
    no_plan = engage(sb)
    assert no_plan.status_code == 402 and no_plan.json() == {
        "error": "Your plan does not include this feature"
    }
    sb.add_faults([{"kind": "status", "code": 500, "endpoint": "engage", "page": 2, "times": 1}])
    head = engage(sb, page_size=7).json()
    more = {"page_size": 7, "session_id": head["session_id"]}
    assert engage(sb, page=1, **more).status_code == 200
    assert engage(sb, page=2, **more).status_code == 500
    assert engage(sb, page=2, **more).status_code == 200
    stats = sb.stats()
    assert stats["engage_responses"] == {"200": 3, "402": 1, "500": 1}
    assert stats["export_requests"] == 1 and stats["responses"] == {"200": 1}
    assert [(e["page"], e["status"]) for e in stats["engage_log"]][-2:] == [(2, 500), (2, 200)]


def test_drop_after_bytes_cuts_the_engage_body(sb: SandboxServer) -> None:
    sb.add_faults([{"kind": "drop_after_bytes", "bytes": 3000, "endpoint": "engage"}])
    with pytest.raises(httpx.TransportError):
        engage(sb)
    assert engage(sb).status_code == 200


def test_bad_faults_are_rejected(sb: SandboxServer) -> None:
    for fault in (
        {"kind": "terminated_early", "endpoint": "engage"},
        {"kind": "status", "endpoint": "nope"},
        {"kind": "status", "page": 1},
    ):
        assert HTTP.post(f"{sb.url}/_sandbox/faults", json=[fault]).status_code == 400


def test_query_concurrency_limit_gives_429_and_is_counted() -> None:
    with SandboxServer(config(query_max_concurrent=2)).start() as sb:
        sb.add_faults([{"kind": "slow_first_byte", "seconds": 4, "times": 2, "endpoint": "engage"}])
        results: list[httpx.Response] = []

        def call() -> None:
            results.append(engage(sb))

        slow = [threading.Thread(target=call) for _ in range(2)]
        for thread in slow:
            thread.start()
        sb.wait_until_faults_taken()  # both admitted, both holding their slot for 4 s
        for _ in range(3):
            call()
        for thread in slow:
            thread.join()
        limited = [r for r in results if r.status_code == 429]
        assert sorted(r.status_code for r in results) == [200, 200, 429, 429, 429]
        assert limited[0].json() == {"error": "too many concurrent queries"}
        assert limited[0].headers["Retry-After"] == "1"
        stats = sb.stats()
        assert stats["engage_rate_limited"] == 3 and stats["engage_max_concurrent"] >= 3
        assert stats["engage_requests"] == 5 and stats["engage_responses"] == {"200": 2, "429": 3}
        assert stats["rate_limited"] == 0 and stats["export_requests"] == 0


def test_query_hourly_limit_and_reset() -> None:
    with SandboxServer(config(query_max_per_hour=2)).start() as sb:
        assert [engage(sb).status_code for _ in range(3)] == [200, 200, 429]
        assert int(engage(sb).headers["Retry-After"]) > 3000
        sb.reset()
        assert engage(sb).status_code == 200


def test_auth(sb: SandboxServer) -> None:
    assert engage(sb, auth=("sandbox-user", "wrong")).status_code == 401
    assert engage(sb, auth=None).status_code == 401
    legacy = HTTP.post(f"{sb.url}{PATHS[1]}", auth=("legacy-secret", ""))
    assert legacy.status_code == 200 and legacy.json()["total"] == 46
    other = HTTP.post(f"{sb.url}{PATHS[0]}", params={"project_id": 2}, auth=AUTH)
    assert other.status_code == 403
    assert HTTP.get(f"{sb.url}{PATHS[0]}", params={"project_id": 1}, auth=AUTH).status_code == 405
    assert sb.stats()["engage_responses"] == {"200": 1, "401": 2, "403": 1}


def test_cli_flags() -> None:
    args = build_parser().parse_args(
        ["--profiles", "5", "--anonymous-profiles", "2", "--query-max-per-hour", "0"]
    )
    cfg = config_from_args(args)
    assert (cfg.profiles, cfg.anonymous_profiles, cfg.query_max_per_hour, cfg.query_max_concurrent) == (
        5,
        2,
        None,
        5,
    )
    assert config_from_args(build_parser().parse_args([])).profiles is None
