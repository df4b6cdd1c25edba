"""The people pipeline against the sandbox's Engage API over real HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sandbox import SandboxServer, profile_lines
from tasks.errors import PlanError, RetriableError
from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.people import EngageQuery, PeopleResult, export_people
from tasks.schema import PEOPLE_TABLE
from tests.conftest import credentials_for, local_destination, start_sandbox
from tests.kit.lake import whole_table

# the ``sandbox`` fixture of tests/conftest.py, with this project's profiles
pytestmark = pytest.mark.sandbox(profiles=137, query_max_concurrent=3)


def run(server: SandboxServer, root: Path, page_size: int = 10, **creds: object) -> PeopleResult:
    with MixpanelClient(credentials_for(server, **creds).api_settings()) as client:
        return export_people(
            client, local_destination(root), EngageQuery(page_size=page_size), max_concurrent_pages=8
        )


def stored(root: Path) -> dict[str, dict]:
    table = whole_table(local_destination(root), PEOPLE_TABLE)
    ids = table["distinct_id"].to_list()
    assert len(ids) == len(set(ids)), "a profile was exported twice"
    return {i: json.loads(p) for i, p in zip(ids, table["properties"].to_list(), strict=True)}


def test_every_profile_exactly_once_across_pages_and_json_equal(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    result = run(sandbox, tmp_path, page_size=10, query_max_concurrent=3)
    served = {d: json.loads(p) for d, p in profile_lines(sandbox.cfg, 0, 137)}
    assert result.rows == 137 and result.pages == 14
    assert stored(tmp_path) == served
    stats = sandbox.stats()
    assert stats["engage_rate_limited"] == 0
    assert stats["engage_max_concurrent"] <= 3


def test_big_integers_floats_and_unicode_survive(sandbox: SandboxServer, tmp_path: Path) -> None:
    run(sandbox, tmp_path, page_size=50, query_max_concurrent=3)
    table = whole_table(local_destination(tmp_path), PEOPLE_TABLE)
    raw = "\n".join(table["properties"].to_list())
    served = "\n".join(p.decode() for _, p in profile_lines(sandbox.cfg, 0, 137))
    for token in ("1180591620717411303424", "-9223372036854775808", "1.0000000000000002", "Zürich", "東京"):
        assert token in served, f"the sandbox no longer serves {token}"
        assert token in raw, token


def test_properties_are_the_bytes_mixpanel_sent(sandbox: SandboxServer, tmp_path: Path) -> None:
    run(sandbox, tmp_path, page_size=50, query_max_concurrent=3)
    table = whole_table(local_destination(tmp_path), PEOPLE_TABLE)
    stored = dict(zip(table["distinct_id"].to_list(), table["properties"].to_list(), strict=True))
    served = {d: p.decode() for d, p in profile_lines(sandbox.cfg, 0, 137)}
    # numbers a re-encoder writes in another form (6.71445388176323e-05 as 0.0000671445388176323)
    exponents = [d for d, p in served.items() if re.search(r"[:,\[]-?\d+(\.\d+)?e-\d+[,}\]]", p)]
    assert exponents, "the sandbox no longer serves numbers in exponent form"
    assert stored == served


def test_a_failed_page_leaves_the_previous_table(sandbox: SandboxServer, tmp_path: Path) -> None:
    run(sandbox, tmp_path, page_size=10, query_max_concurrent=3)
    before = whole_table(local_destination(tmp_path), PEOPLE_TABLE)
    sandbox.add_faults([{"kind": "status", "code": 500, "endpoint": "engage", "page": 4, "times": 50}])
    with pytest.raises(RetriableError, match="Engage page 4 failed"):
        run(sandbox, tmp_path, page_size=10, query_max_concurrent=3, max_attempts=3)
    assert whole_table(local_destination(tmp_path), PEOPLE_TABLE).equals(before)
    assert not [p for p in tmp_path.glob("1/_staging/**/*") if p.is_file()]


def test_a_plan_without_engage_fails_with_one_sentence(tmp_path: Path) -> None:
    server = start_sandbox(profiles=5)
    try:
        server.add_faults([{"kind": "status", "code": 402, "endpoint": "engage", "times": 5}])
        with pytest.raises(PlanError, match="plan has no access to this API"):
            run(server, tmp_path)
        assert server.stats()["engage_requests"] == 1
    finally:
        server.stop()
