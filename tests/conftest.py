"""Shared fixtures: a sandbox Mixpanel on loopback, credentials for it, a Prefect test server."""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import xxhash

from blocks.mixpanel import MixpanelCredentials
from sandbox import ProjectConfig, SandboxServer
from tasks.lake.commit import Lake
from tasks.lake.manifest import fingerprint_hex
from tasks.lake.store import LocalStore
from tests.stores import shared

# the local store servers (moto, the GCS emulator, Azurite, fakesnow, the BigQuery emulator) as session
# fixtures shared by every module; moto, Azurite and fakesnow by every worker too (tests/stores/shared.py)
pytest_plugins = [
    "tests.stores.s3",
    "tests.stores.azure",
    "tests.stores.gcs",
    "tests.stores.catalog",
    "tests.stores.snowflake",
    "tests.stores.bigquery",
    "tests.kit.cluster",
    "tests.kit.browser",
]


# A server that takes long to start and is shared by a session runs on one pytest-xdist worker with every
# test that uses it (`make test` passes `--dist loadgroup`): it starts once, and the README's fixed ports
# are never taken twice. The groups are modules (xdist's own `xdist_group` marks do not group under
# pytest 9.2: xdist 3.8 renames nodes through an attribute pytest no longer reads); xdist hands out the
# largest groups first, so these long chains start at once.
# The BigQuery emulator (DuckDB and its spatial extension) is the heaviest of the store servers to start:
# its tests, and every `[bigquery]` case of the destination scenarios and warehouse tests, share one too.
XDIST_GROUPS = {
    "tests/ops/test_deployments.py": "prefect-cluster",
    "tests/ops/test_ui.py": "prefect-cluster",
    "tests/ops/test_terminal_run.py": "prefect-cluster",
    "tests/ops/test_readme_ops.py": "readme-ops",
    "tests/ops/test_alerts.py": "alerts",
    "tests/emulators/test_bigquery_emulator.py": "bigquery",
    # one copy of the checkout and its environment for both demo runs, one after the other
    "tests/ops/test_demo.py": "demo",
    # one copy of the checkout, its PostgreSQL and its environment for both tests that use it
    "tests/ops/test_production.py": "production",
}
GROUPED_FIXTURES = {"cluster": "prefect-cluster", "stack": "readme-ops"}


def xdist_group(nodeid: str) -> str | None:
    """The group a test runs in (None: any worker)."""
    module = nodeid.split("::", 1)[0]
    if "[bigquery" in nodeid:  # a destination case of the emulator (tests/kit/destinations.py)
        return "bigquery"
    return XDIST_GROUPS.get(module)


# What a test says when its days come from the machine's calendar (directly, or through a helper of
# tests/ that does): such a test is marked `calendar`, and `make test-dates` runs those as if today were
# each of many dates (tests/dates.py), so that a premise only some dates' data meets is found here.
CALENDAR_WORDS = ("recent_days(", "current_day(", "yesterday(", "today(", "datetime.now(", "date.today(")


def _calendar_helpers() -> frozenset[str]:
    """Names of the functions in tests/ (not tests themselves) that read the calendar."""
    functions = (
        node
        for path in Path(__file__).parent.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_")
    )
    found = {f.name for f in functions if any(word in ast.unparse(f) for word in CALENDAR_WORDS)}
    return frozenset(found - {"recent_days"})


def reads_the_calendar(item: pytest.Item, helpers: frozenset[str]) -> bool:
    function = getattr(item, "function", None)
    if function is None:
        return False
    source = inspect.getsource(function)
    fixtures = getattr(item, "fixturenames", ())
    return any(w in source for w in CALENDAR_WORDS) or any(
        f"{h}(" in source or h in fixtures for h in helpers
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    helpers = _calendar_helpers()
    for item in items:
        if reads_the_calendar(item, helpers):
            item.add_marker(pytest.mark.calendar)
        for fixture, group in GROUPED_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and xdist_group(item.nodeid) != group:
                module = item.nodeid.split("::", 1)[0]
                raise pytest.UsageError(f"{module} uses `{fixture}`: add it to XDIST_GROUPS as {group!r}")


def _owns_the_run(config: pytest.Config) -> bool:
    """xdist's controller, or pytest itself without ``-n``: not one of the workers."""
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _owns_the_run(config):
        shared.start_run()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _owns_the_run(config):
        shared.end_run()


@pytest.hookimpl(tryfirst=True)  # before xdist's own scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The groups for `--dist loadgroup`, and for a bare `-n N` too (`load`), which would otherwise start
    the cluster once per worker and the README drill twice on its fixed ports."""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ModuleGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or super()._split_scope(nodeid)

    return ModuleGroups(config, log)


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own rate-budget database, so budgets never leak between tests."""
    monkeypatch.setenv("MP_PIPELINES_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(autouse=True)
def _no_gdpr_registry_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """The project's GDPR registry lives in the Prefect server, shared by a worker's tests: each test
    that could write it leaves none behind, or its ids would vanish from the next test's exports."""
    yield
    if "prefect_server" not in request.fixturenames:
        return
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_block_type_by_slug("mixpanel-gdpr-registry")
        except ObjectNotFound:  # no test has saved one on this server yet
            return
        for document in client.read_block_documents_by_type("mixpanel-gdpr-registry"):
            client.delete_block_document(document.id)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A Prefect test server per pytest process. It registers no block type at start (Prefect's own
    and every installed integration's, ~9 s of CPU each time): a block saved by a test registers its
    own type, as it does on any server. It runs no automations and keeps no event history (the
    triggers and the event persister, which act on every event of every run): the tests of those run
    on the cluster's server (tests/kit/cluster.py). Task runs are still recorded from their events."""
    from prefect.settings import (
        PREFECT_API_BLOCKS_REGISTER_ON_START,
        PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED,
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    lighter = {
        PREFECT_API_BLOCKS_REGISTER_ON_START: False,
        PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION: False,
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED: False,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED: False,
    }
    with temporary_settings(updates=lighter), prefect_test_harness(server_startup_timeout=120):
        yield


class StoppedClock:
    """Stands in for the ``time`` module of the sandbox's rate limits (``sandbox.stats``,
    ``sandbox.gdpr_tasks``): no time passes for them until the test calls ``advance``, however slow
    the machine is."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def start_sandbox(**overrides: object) -> SandboxServer:
    config = {"events_per_day": 300, "seed": 7} | overrides
    return SandboxServer(ProjectConfig(**config)).start()  # type: ignore[arg-type]


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    """A fresh sandbox for one test; ``@pytest.mark.sandbox(**overrides)`` changes its ProjectConfig."""
    marker = request.node.get_closest_marker("sandbox")
    server = start_sandbox(**(marker.kwargs if marker else {}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    """One sandbox for a whole module, made from the module's own ``config()`` (see ``sb``)."""
    with SandboxServer(request.module.config()).start() as server:
        yield server


@pytest.fixture
def sb(module_sandbox: SandboxServer) -> SandboxServer:
    """The module's sandbox as new: counters, faults, added events, deletions and GDPR tasks cleared."""
    module_sandbox.reset()
    module_sandbox.clear_changes()
    return module_sandbox


def credentials_for(server: SandboxServer, **overrides: object) -> MixpanelCredentials:
    cfg = server.cfg
    values: dict[str, object] = {
        "project_id": cfg.project_id,
        "service_account_username": cfg.username,
        "service_account_secret": cfg.secret,
        "api_base_url": server.url,
        "time_mode": cfg.time_mode,
        "project_timezone": cfg.timezone,
        "retry_backoff_seconds": 0.05,
        "max_attempts": 6,
    }
    return MixpanelCredentials(**(values | overrides))


def recent_days(count: int, server: SandboxServer, back: int = 1) -> list[date]:
    """``count`` days ending ``back`` days before the sandbox's today."""
    last = server.cfg.current_day() - timedelta(days=back)
    return [last - timedelta(days=i) for i in reversed(range(count))]


def local_destination(root: Path, project_id: int = 1) -> Lake:
    return Lake(LocalStore(root), project_id)


def read_day(root: Path, day: date, project_id: int = 1) -> pl.DataFrame:
    """The committed rows of one day, following its manifest."""
    dest = local_destination(root, project_id)
    manifest = dest.manifest("mp_master_event", day.isoformat())
    assert manifest is not None, f"no manifest for {day}"
    files = [root / f.key for f in manifest.files]
    if not files:
        return pl.DataFrame()
    if manifest.format == "parquet":
        return pl.read_parquet(files)
    return pl.concat([pl.read_ndjson(f, infer_schema_length=None) for f in files], how="diagonal_relaxed")


def fingerprint_of_rows(frame: pl.DataFrame) -> str:
    """Recomputed from the stored columns: proves the files hold the exact source bytes."""
    total = 0
    for name, props in zip(frame["event_name"].to_list(), frame["properties"].to_list(), strict=True):
        total += xxhash.xxh3_64_intdigest(props.encode(), seed=xxhash.xxh3_64_intdigest(name.encode()))
    return fingerprint_hex(total)


def assert_day_matches_sandbox(root: Path, server: SandboxServer, day: date) -> None:
    expected = server.expected(day, day)[day.isoformat()]
    manifest = local_destination(root).manifest("mp_master_event", day.isoformat())
    assert manifest is not None
    assert (manifest.rows, manifest.fingerprint) == (expected["rows"], expected["fingerprint"])
    rows = read_day(root, day)
    assert rows.height == expected["rows"]
    assert fingerprint_of_rows(rows) == expected["fingerprint"]


def staging_files(root: Path) -> list[Path]:
    return [p for p in root.glob("*/_staging/**/*") if p.is_file()]
