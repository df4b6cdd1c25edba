"""Identity edges travel with their day, and the identity flow turns them into the mappings table."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest

from blocks.destinations.local import LocalDestination
from flows.events import events
from flows.identity import identity
from sandbox import SandboxServer, day_lines
from tasks.schema import MAPPINGS_TABLE
from tests.conftest import credentials_for, local_destination, recent_days, start_sandbox
from tests.kit.expected import expected_simplified
from tests.kit.lake import committed, whole_table

pytestmark = pytest.mark.usefixtures("prefect_server")
# written out here, not imported from the code under test
UUID4 = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}")


def test_identity_mappings_follow_the_committed_days(sandbox: SandboxServer, tmp_path: Path) -> None:
    days = recent_days(3, sandbox)
    target = LocalDestination(path=str(tmp_path))
    creds = credentials_for(sandbox, identity_mode="simplified")
    events(creds, target, from_date=days[0], to_date=days[-1])
    for day in days:
        manifest = committed(local_destination(tmp_path), "mp_master_event", day.isoformat())
        assert manifest.identity_edges, f"{day} has no edge file"
        assert all(f.key.startswith("1/_state/identity_edges/") for f in manifest.identity_edges)

    summary = identity(creds, target)
    mappings = whole_table(local_destination(tmp_path), MAPPINGS_TABLE)
    got = dict(
        zip(mappings["distinct_id"].to_list(), mappings["resolved_distinct_id"].to_list(), strict=True)
    )
    assert got == expected_simplified(sandbox, days)
    assert summary["days"] == 3 and summary["mapped ids"] == len(got)


def test_rerunning_a_day_replaces_its_edges(sandbox: SandboxServer, tmp_path: Path) -> None:
    (day,) = recent_days(1, sandbox)
    target = LocalDestination(path=str(tmp_path))
    creds = credentials_for(sandbox)
    events(creds, target, from_date=day, to_date=day)
    first = committed(local_destination(tmp_path), "mp_master_event", day.isoformat())
    events(creds, target, from_date=day, to_date=day)
    second = committed(local_destination(tmp_path), "mp_master_event", day.isoformat())
    assert {f.key for f in first.identity_edges}.isdisjoint(f.key for f in second.identity_edges)
    edge_dir = tmp_path / "1" / "_state" / "identity_edges" / day.strftime("%Y/%m/%d")
    assert sorted(p.name for p in edge_dir.iterdir()) == sorted(
        f.key.rsplit("/", 1)[1] for f in second.identity_edges
    )


def test_original_id_merge_projects_map_anonymous_ids_to_the_identified_user(tmp_path: Path) -> None:
    # a refused $identify whose anon id no accepted merge names is rare (about one day in four has
    # one): the project's calendar is fixed on two days that hold one, so the premise holds on any date
    server = start_sandbox(identity_mode="original", events_per_day=600, today=date(2026, 11, 3))
    try:
        days = recent_days(2, server)
        target = LocalDestination(path=str(tmp_path))
        creds = credentials_for(server, identity_mode="original")
        events(creds, target, from_date=days[0], to_date=days[-1])
        summary = identity(creds, target)
        mappings = whole_table(local_destination(tmp_path), MAPPINGS_TABLE)
        assert mappings.height > 0
        identified = set()
        linked: set[str] = set()  # anon ids an accepted merge event names
        refused: set[str] = set()  # anon ids of $identify events Mixpanel refuses (not a UUID v4)
        for day in days:
            for line in day_lines(server.cfg, day):
                record = json.loads(line)
                props = record["properties"]
                if record["event"] == "$identify":
                    if UUID4.fullmatch(props["$anon_id"].removeprefix("$device:")):
                        identified.add(props["$identified_id"])
                        linked.add(props["$anon_id"])
                    else:
                        refused.add(props["$anon_id"])
                elif record["event"] == "$create_alias":
                    identified.add(props["distinct_id"])
                    linked.add(props["alias"])
                elif record["event"] == "$merge":
                    linked.update(props["$distinct_ids"])
        mapped = set(mappings["distinct_id"].to_list())
        assert refused - linked, "the sandbox serves anon ids only a refused $identify names"
        assert not (refused - linked) & mapped, "a non-UUID anon id was merged by $identify"
        assert linked <= mapped
        refused_events = sum(
            1
            for day in days
            for line in day_lines(server.cfg, day)
            if b'"$identify"' in line and b'"$anon_id":"anon-' in line
        )
        assert summary["identifies refused (anon id not UUID v4)"] == refused_events > 0
        clusters: dict[str, set[str]] = {}
        for distinct, resolved in zip(mappings["distinct_id"], mappings["resolved_distinct_id"], strict=True):
            clusters.setdefault(resolved, set()).add(distinct)
        for resolved, members in clusters.items():
            users = {m for m in members if m.startswith("user_")}
            assert len(users) == 1, f"the sandbox only ever links a device with its own user: {members}"
            if users & identified:
                assert resolved == users.pop(), "an identified user is the canonical id of its cluster"
    finally:
        server.stop()
