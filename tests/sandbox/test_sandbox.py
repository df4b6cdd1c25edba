"""The Mixpanel sandbox server: deterministic data, fingerprints, auth, filters, faults and rate limits."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import zlib
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from sandbox import ProjectConfig, SandboxServer, day_lines, fingerprint
from sandbox.data import split_line
from sandbox.where import WhereError, parse_where
from tests.conftest import StoppedClock

TODAY = date(2024, 3, 10)
DAY = date(2024, 3, 1)
AUTH = ("sandbox-user", "sandbox-secret")
UNLIMITED = {"max_per_second": None, "max_per_hour": None, "max_concurrent": None}
# One shared client: creating an httpx client per call costs ~0.1 s (TLS context setup).
HTTP = httpx.Client(timeout=30)


def config(**overrides: Any) -> ProjectConfig:
    """This module's project; ``config()`` is also the shared sandbox behind ``sb`` (tests/conftest.py)."""
    return ProjectConfig(**{"today": TODAY, **UNLIMITED, **overrides})


def export(
    sb: SandboxServer, from_date: str = "2024-03-01", to_date: str = "2024-03-01", **kw: Any
) -> httpx.Response:
    params = {"from_date": from_date, "to_date": to_date, "project_id": 1, **kw.pop("params", {})}
    headers = kw.pop("headers", {"Accept-Encoding": "identity"})
    return HTTP.get(
        f"{sb.url}/api/2.0/export", params=params, auth=kw.pop("auth", AUTH), headers=headers, **kw
    )


def body_lines(response: httpx.Response) -> list[bytes]:
    assert response.content.endswith(b"\n")
    return response.content[:-1].split(b"\n")


# --- deterministic data -------------------------------------------------------------------------------


def test_day_lines_are_deterministic_and_vary_by_day_and_seed() -> None:
    cfg = config()
    assert day_lines(cfg, DAY) == day_lines(config(), DAY)
    assert day_lines(cfg, DAY) != day_lines(cfg, date(2024, 3, 2))
    assert day_lines(cfg, DAY) != day_lines(config(seed=2), DAY)
    assert len(day_lines(cfg, DAY)) == cfg.events_per_day


def test_lines_look_like_mixpanel_exports() -> None:
    cfg = config(events_per_day=3000)
    lines = day_lines(cfg, DAY)
    start = int(datetime(2024, 3, 1, tzinfo=ZoneInfo("UTC")).timestamp())
    records = [json.loads(line) for line in lines]
    assert all(list(r) == ["event", "properties"] for r in records)
    props = [r["properties"] for r in records]
    assert all(start <= p["time"] < start + 86400 for p in props)
    assert all(p["mp_processing_time_ms"] > p["time"] * 1000 for p in props)
    assert len(lines) > len(set(lines)), "exact duplicates expected"
    assert any("$insert_id" not in p for p in props)
    hot = [r for r in records if r["event"] == "$hotshard_events"]
    assert hot and all(r["properties"]["distinct_id"] == "" for r in hot)
    assert all("mp_original_event_name" in r["properties"] for r in hot)
    text = b"\n".join(lines).decode()
    for needle in ("Zürich", "東京", "São Paulo", "1e-07", "1180591620717411303424", "-0.0", "\\u"):
        assert needle in text
    assert max(map(len, lines)) > 10_000
    assert any(list(p) != sorted(p) for p in props)


def test_simplified_identity() -> None:
    for line in day_lines(config(), DAY):
        p = json.loads(line)["properties"]
        if p.get("mp_original_distinct_id") is not None:
            continue
        if "$user_id" in p:
            assert p["distinct_id"] == p["$user_id"] and "$device_id" in p
        else:
            assert p["distinct_id"] == f"$device:{p['$device_id']}"


def test_original_identity_emits_identity_events() -> None:
    records = [
        json.loads(line) for line in day_lines(config(identity_mode="original", events_per_day=2000), DAY)
    ]
    events = {r["event"]: r["properties"] for r in records}
    assert {"$identify", "$create_alias", "$merge"} <= set(events)
    assert {"$anon_id", "$identified_id"} <= set(events["$identify"])
    assert len(events["$merge"]["$distinct_ids"]) == 2


def test_fingerprint_definition() -> None:
    import xxhash

    lines = [b'{"event":"A","properties":{"time":1}}', b'{"event":"\\u00e9","properties":{}}']

    def h(name: bytes, props: bytes) -> int:
        return xxhash.xxh3_64_intdigest(props, seed=xxhash.xxh3_64_intdigest(name))

    expected = (h(b"A", b'{"time":1}') + h("é".encode(), b"{}")) % 2**64
    assert fingerprint(lines) == (2, f"{expected:016x}")
    assert fingerprint(lines[::-1]) == fingerprint(lines)
    assert split_line(lines[1]) == ("é".encode(), b"{}")


# --- export endpoint ------------------------------------------------------------------------------------


def test_expected_matches_plain_download(sb: SandboxServer) -> None:
    response = export(sb, "2024-03-01", "2024-03-03")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = body_lines(response)
    expected = HTTP.get(f"{sb.url}/_sandbox/expected?from_date=2024-03-01&to_date=2024-03-03").json()
    assert expected == sb.expected("2024-03-01", "2024-03-03")
    assert sum(v["rows"] for v in expected.values()) == len(lines) == 1500
    for day, value in expected.items():
        day_body = export(sb, day, day)
        assert fingerprint(body_lines(day_body)) == (value["rows"], value["fingerprint"])


def test_gzip_decodes_to_same_bytes(sb: SandboxServer) -> None:
    plain = export(sb)
    with HTTP.stream(
        "GET",
        f"{sb.url}/api/2.0/export",
        params={"from_date": "2024-03-01", "to_date": "2024-03-01", "project_id": 1},
        auth=AUTH,
        headers={"Accept-Encoding": "gzip"},
    ) as response:
        assert response.headers["content-encoding"] == "gzip"
        raw = b"".join(response.iter_raw())
    assert zlib.decompress(raw, 31) == plain.content
    assert "content-encoding" not in plain.headers


def test_gzip_body_cached_per_range_is_the_same_body(tmp_path: Path) -> None:
    with SandboxServer(config(cache_dir=tmp_path, gzip_cached=True)).start() as sb:
        plain = export(sb, "2024-03-01", "2024-03-02")
        raws = []
        for _ in range(2):
            with HTTP.stream(
                "GET",
                f"{sb.url}/api/2.0/export",
                params={"from_date": "2024-03-01", "to_date": "2024-03-02", "project_id": 1},
                auth=AUTH,
                headers={"Accept-Encoding": "gzip"},
            ) as response:
                assert response.headers["content-encoding"] == "gzip"
                raws.append(b"".join(response.iter_raw()))
    cached = list(tmp_path.rglob("2024-03-01_2024-03-02.jsonl.gz"))
    assert len(cached) == 1 and cached[0].read_bytes() == raws[0] == raws[1]
    assert zlib.decompress(raws[0], 31) == plain.content
    assert len(body_lines(plain)) == 1000


def test_gzip_can_be_disabled() -> None:
    with SandboxServer(config(gzip=False)).start() as sb:
        response = export(sb, headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in response.headers
        assert len(body_lines(response)) == 500


@pytest.mark.parametrize(
    ("auth", "params", "status", "message"),
    [
        (("sandbox-user", "wrong"), {}, 401, "Unable to authenticate request"),
        (None, {}, 401, "Unable to authenticate request"),
        (AUTH, {"project_id": ""}, 400, "project_id is required for service account authentication"),
        (AUTH, {"project_id": 2}, 403, None),
        (AUTH, {"to_date": "2024-03-11"}, 400, "to_date cannot be later than today"),
        (AUTH, {"from_date": "2024-03-05", "to_date": "2024-03-04"}, 400, None),
        (AUTH, {"from_date": "2024-3-1"}, 400, None),
        (AUTH, {"where": 'properties["x"] == 1'}, 400, "invalid where expression"),
        (AUTH, {"event": "not json"}, 400, None),
    ],
)
def test_error_statuses(
    sb: SandboxServer, auth: Any, params: dict[str, Any], status: int, message: str | None
) -> None:
    response = export(sb, params=params, auth=auth)
    assert response.status_code == status
    assert "error" in response.json()
    if message:
        assert response.json() == {"error": message}


def test_legacy_secret_needs_no_project_id(sb: SandboxServer) -> None:
    response = HTTP.get(
        f"{sb.url}/api/2.0/export/",
        params={"from_date": "2024-03-01", "to_date": "2024-03-01"},
        auth=("legacy-secret", ""),
    )
    assert response.status_code == 200 and response.content.count(b"\n") == 500


def test_where_filters_time_and_processing_time(sb: SandboxServer) -> None:
    lines = day_lines(sb.cfg, DAY)
    props = [json.loads(split_line(line)[1]) for line in lines]
    lo, hi = props[0]["time"] - 3600, props[0]["time"] + 3600
    where = f'properties["time"] >= datetime({lo}) and properties["time"] < datetime({hi})'
    got = [json.loads(line)["properties"] for line in body_lines(export(sb, params={"where": where}))]
    assert len(got) == sum(lo <= p["time"] < hi for p in props) > 0
    watermark = sorted(p["mp_processing_time_ms"] for p in props)[400]
    where = f'number(properties["mp_processing_time_ms"]) > {watermark}'
    got = [json.loads(line)["properties"] for line in body_lines(export(sb, params={"where": where}))]
    assert len(got) == sum(p["mp_processing_time_ms"] > watermark for p in props) > 0


def test_the_export_where_parser() -> None:
    pred = parse_where(
        '(properties["time"] > datetime(10)) and (number(properties["mp_processing_time_ms"]) <= 5)'
    )
    assert pred({"time": 11, "mp_processing_time_ms": 5})
    assert not pred({"time": 10, "mp_processing_time_ms": 5})
    assert not pred({"time": 11})
    with pytest.raises(WhereError):
        parse_where('properties["time"] >= "2024"')


def test_event_filter_and_limit(sb: SandboxServer) -> None:
    response = export(sb, params={"event": json.dumps(["Search", "ログイン"])})
    events = {json.loads(line)["event"] for line in body_lines(response)}
    assert events == {"Search", "ログイン"}
    assert len(body_lines(export(sb, "2024-03-01", "2024-03-02", params={"limit": 7}))) == 7


def test_local_time_mode_keeps_time_inside_local_day() -> None:
    tz = "America/Los_Angeles"
    cfg = config(time_mode="local", timezone=tz, today=None)
    with SandboxServer(cfg).start() as sb:
        local_today = datetime.now(ZoneInfo(tz)).date()
        assert export(sb, str(local_today), str(local_today)).status_code == 200
        ahead = date.fromordinal(local_today.toordinal() + 1)
        assert export(sb, str(ahead), str(ahead)).status_code == 400
        response = export(sb, "2024-03-10", "2024-03-10")  # DST starts: a 23-hour local day
    start = (date(2024, 3, 10) - date(1970, 1, 1)).days * 86400
    for line in body_lines(response):
        p = json.loads(line)["properties"]
        assert start <= p["time"] < start + 86400
        # Local epoch is wall clock "as if UTC": the true instant is 7 or 8 hours later in Los Angeles.
        assert p["mp_processing_time_ms"] >= (p["time"] + 7 * 3600) * 1000


# --- faults and quirks ----------------------------------------------------------------------------------


def test_status_fault_with_retry_after_applies_times_then_clears(sb: SandboxServer) -> None:
    sb.add_faults(
        [{"kind": "status", "code": 503, "retry_after": 2, "times": 2}, {"kind": "status", "code": 500}]
    )
    first, second, third, fourth = (export(sb) for _ in range(4))
    assert (first.status_code, second.status_code, third.status_code, fourth.status_code) == (
        503,
        503,
        500,
        200,
    )
    assert first.headers["retry-after"] == "2" and "error" in first.json()
    assert sb.stats()["responses"] == {"200": 1, "500": 1, "503": 2}


def test_drop_after_bytes_breaks_the_stream(sb: SandboxServer) -> None:
    sb.add_faults([{"kind": "drop_after_bytes", "bytes": 20_000}])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        export(sb)
    assert export(sb).status_code == 200


def test_drop_after_bytes_with_gzip(sb: SandboxServer) -> None:
    sb.add_faults([{"kind": "drop_after_bytes", "bytes": 5_000}])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.DecodingError)):
        export(sb, headers={"Accept-Encoding": "gzip"})


def test_terminated_early(sb: SandboxServer) -> None:
    sb.add_faults([{"kind": "terminated_early", "after_lines": 100}])
    lines = body_lines(export(sb))
    assert len(lines) == 101 and lines[-1] == b"export terminated early"
    assert lines[:100] == day_lines(sb.cfg, DAY)[:100]


def test_partial_last_line(sb: SandboxServer) -> None:
    sb.add_faults([{"kind": "partial_last_line", "after_lines": 10}])
    response = export(sb)
    assert response.status_code == 200 and not response.content.endswith(b"\n")
    lines = response.content.split(b"\n")
    assert len(lines) == 11
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[-1])


def test_slow_first_byte(sb: SandboxServer) -> None:
    sb.add_faults([{"kind": "slow_first_byte", "seconds": 0.4}])
    started = time.monotonic()
    assert export(sb).status_code == 200
    assert time.monotonic() - started >= 0.4


def test_quirks_malformed_and_split(sb: SandboxServer) -> None:
    sb.set_quirks(
        [
            {"kind": "malformed_line", "day": "2024-03-01", "index": 5},
            {"kind": "split_record", "day": "2024-03-01", "index": 7},
        ]
    )
    original = day_lines(sb.cfg, DAY)
    for _ in range(2):  # persistent, not consumed
        lines = body_lines(export(sb))
        assert len(lines) == 502
        assert lines[5] == b'{"event": "broken", "properties": {'
        assert lines[8] + lines[9] == original[7]
        assert json.loads(lines[8] + b"\n" + lines[9]) == json.loads(original[7])
    assert sb.expected(DAY, DAY)[str(DAY)]["rows"] == 500
    response = HTTP.post(f"{sb.url}/_sandbox/reset")
    assert response.status_code == 200
    assert len(body_lines(export(sb))) == 500


def test_admin_endpoints(sb: SandboxServer) -> None:
    response = HTTP.post(f"{sb.url}/_sandbox/faults", json=[{"kind": "status", "code": 402}])
    assert response.status_code == 200 and len(response.json()["pending"]) == 1
    assert HTTP.post(f"{sb.url}/_sandbox/faults", json=[{"kind": "nope"}]).status_code == 400
    assert export(sb).status_code == 402
    quirks = [{"kind": "malformed_line", "day": "2024-03-01", "index": 0}]
    assert HTTP.post(f"{sb.url}/_sandbox/quirks", json=quirks).json()["quirks"] == quirks
    assert body_lines(export(sb))[0].startswith(b'{"event": "broken"')
    stats = HTTP.get(f"{sb.url}/_sandbox/stats").json()
    assert stats["export_requests"] == 2 and stats["responses"] == {"200": 1, "402": 1}
    assert stats["bytes_served"] > 400_000
    assert HTTP.get(f"{sb.url}/nope").status_code == 404


def test_disk_cache_serves_same_bytes_and_applies_quirks(tmp_path: Path) -> None:
    cfg = config(cache_dir=tmp_path, events_per_day=800)
    with SandboxServer(cfg).start() as sb:
        sb.set_quirks([{"kind": "split_record", "day": "2024-03-02", "index": 3}])
        lines = body_lines(export(sb, "2024-03-01", "2024-03-02"))
        files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
        assert files == [
            "2024-03-01.jsonl",
            "2024-03-01.meta.json",
            "2024-03-02.jsonl",
            "2024-03-02.meta.json",
        ]
        generated = day_lines(cfg, DAY) + day_lines(cfg, date(2024, 3, 2))
        assert len(lines) == len(generated) + 1
        assert lines[:800] == generated[:800]
        expected = sb.expected("2024-03-01", "2024-03-02")
        assert expected["2024-03-01"] == dict(
            zip(("rows", "fingerprint"), fingerprint(generated[:800]), strict=True)
        )
        sb.add_faults([{"kind": "terminated_early", "after_lines": 3}])
        assert body_lines(export(sb))[-1] == b"export terminated early"


# --- rate limits ----------------------------------------------------------------------------------------


def test_per_second_limit_gives_429_and_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = StoppedClock()
    monkeypatch.setattr("sandbox.stats.time", clock)
    with SandboxServer(config(max_per_second=3)).start() as sb:
        statuses = [export(sb, params={"limit": 1}).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        limited = export(sb)
        assert limited.headers["retry-after"] == "1"
        assert limited.json() == {"error": "too many export requests in progress for this project"}
        stats = sb.stats()
        assert stats["rate_limited"] == 3 and stats["max_in_any_second"] == 6
        clock.advance(1.05)
        assert export(sb, params={"limit": 1}).status_code == 200


def test_per_hour_limit() -> None:
    with SandboxServer(config(max_per_hour=2)).start() as sb:
        assert [export(sb, params={"limit": 1}).status_code for _ in range(3)] == [200, 200, 429]
        sb.reset()
        assert export(sb, params={"limit": 1}).status_code == 200


def test_concurrency_limit_and_max_concurrent_stat() -> None:
    with SandboxServer(config(max_concurrent=2)).start() as sb:
        sb.add_faults([{"kind": "slow_first_byte", "seconds": 4, "times": 2}])
        statuses: list[int] = []
        lock = threading.Lock()

        def call() -> None:
            code = export(sb, params={"limit": 1}).status_code
            with lock:
                statuses.append(code)

        slow = [threading.Thread(target=call) for _ in range(2)]
        for t in slow:
            t.start()
        sb.wait_until_faults_taken()  # both admitted, both holding their slot for 4 s
        call()
        call()
        for t in slow:
            t.join()
        assert sorted(statuses) == [200, 200, 429, 429]
        # a handler counts itself out just after its last byte reached the client
        deadline = time.monotonic() + 5
        while sb.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = sb.stats()
        assert stats["max_concurrent"] >= 3 and stats["rate_limited"] == 2 and stats["in_flight"] == 0


def test_cli_prints_port_and_serves() -> None:
    cmd = [sys.executable, "-m", "sandbox", "--port", "0", "--today", "2024-03-10", "--events-per-day", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("sandbox listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        response = HTTP.get(
            f"{url}/api/2.0/export",
            params={"from_date": "2024-03-01", "to_date": "2024-03-01"},
            auth=("legacy-secret", ""),
        )
        assert response.status_code == 200 and response.text.count("\n") == 20
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
