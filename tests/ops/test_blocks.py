"""Our blocks pass Prefect's standard block checks, so the UI form explains every field."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite

from blocks.destinations.catalog import BLOCK_TYPES
from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.local import LocalDestination
from blocks.mixpanel import MixpanelCredentials, MixpanelTuning
from flows.runtime import synchronous
from tasks.errors import FatalError, MissingDestinationError
from tasks.mixpanel.settings import Tuning


@pytest.mark.parametrize("block_class", BLOCK_TYPES)
class TestStandardSuite(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block_class: type[Block]) -> type[Block]:
        return block_class


def test_an_unwritable_destination_folder_fails_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FatalError, match="cannot write to the destination folder"):
        LocalDestination(path=str(blocker / "sub"), create_missing=True).connect(1)


def test_a_missing_destination_folder_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "nas-not-mounted" / "mixpanel"
    for block, where in (
        (LocalDestination(path=str(missing)), f"the destination folder {missing} does not exist"),
        (
            DuckDBWarehouse(database=str(missing / "wh.duckdb"), files=str(tmp_path)),
            f"the folder of the DuckDB database {missing} does not exist",
        ),
    ):
        with pytest.raises(MissingDestinationError) as info:
            block.connect(1)
        message = str(info.value)
        assert message.startswith(where), message
        assert "mount or create it, or set create_missing=true" in message
        assert "\n" not in message and message.endswith("."), message
        assert not missing.parent.exists()
    LocalDestination(path=str(missing), create_missing=True).connect(1)
    assert missing.is_dir()


def test_the_embedded_default_folder_is_created_where_the_worker_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`data` in the working directory is the product's own folder: a fresh clone's first run (and a
    warehouse staging there by default) needs no step to make it."""
    monkeypatch.chdir(tmp_path)
    DuckDBWarehouse().connect(1)
    assert (tmp_path / "data").is_dir() and (tmp_path / "data" / "mixpanel.duckdb").exists()


FLAT_FIELDS = {  # a MixpanelCredentials document as blocks were saved before the tuning section
    "project_id": 7,
    "service_account_username": "sa",
    "service_account_secret": "s3cret",
    "residency": "EU",
    "max_attempts": 3,
    "read_timeout_seconds": 42.0,
    "export_requests_per_hour": 30,
    "max_line_bytes": 2 << 20,
}


def test_a_credentials_block_saved_with_flat_tuning_fields_still_loads(prefect_server: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    MixpanelCredentials.register_type_and_schema()
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug(MixpanelCredentials.get_block_type_slug())
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
        assert schema is not None
        client.create_block_document(
            BlockDocumentCreate(
                name="saved-flat",
                data=FLAT_FIELDS,
                block_schema_id=schema.id,
                block_type_id=block_type.id,
            )
        )
    loaded: MixpanelCredentials = synchronous(MixpanelCredentials.load("saved-flat"))
    assert (loaded.project_id, loaded.residency) == (7, "EU")
    assert loaded.tuning == MixpanelTuning(
        max_attempts=3, read_timeout_seconds=42.0, export_requests_per_hour=30, max_line_bytes=2 << 20
    )
    settings = loaded.api_settings()
    assert (settings.tuning.max_attempts, settings.tuning.read_timeout_seconds) == (3, 42.0)
    assert "s3cret" not in repr(settings), "secrets stay out of the settings' repr"


def test_the_credentials_form_puts_tuning_in_its_own_section() -> None:
    schema = MixpanelCredentials.model_json_schema()
    required_by_user = {"project_id", "service_account_username", "service_account_secret", "residency"}
    assert required_by_user <= set(schema["properties"])
    assert "max_attempts" not in schema["properties"]
    tuning = schema["definitions" if "definitions" in schema else "$defs"]["MixpanelTuning"]
    assert {"max_attempts", "read_timeout_seconds", "export_requests_per_hour"} <= set(tuning["properties"])
    assert all(field.get("description") for field in tuning["properties"].values())


def test_the_tuning_form_shows_the_plain_settings_defaults_and_hands_them_back() -> None:
    schema = MixpanelCredentials.model_json_schema()
    tuning = schema["definitions" if "definitions" in schema else "$defs"]["MixpanelTuning"]
    assert {name: field["default"] for name, field in tuning["properties"].items()} == asdict(Tuning())
    assert MixpanelTuning(max_attempts=3).plain() == Tuning(max_attempts=3)


def test_a_reference_to_a_saved_block_passes_the_servers_checks_when_only_default_only_blocks_are_offered() -> (
    None
):
    """What Prefect's server checks when `make deploy` creates a deployment (the schema as it is) and then
    pins its blocks by id (preprocessed: the block or a reference, exactly one), in an environment without
    extras: the destination parameter offers LocalDestination and DuckDBWarehouse only."""
    from prefect._internal.schemas.validators import validate_values_conform_to_schema
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    def flow_like(destination: LocalDestination | DuckDBWarehouse | None = None) -> None: ...

    schema = parameter_schema(flow_like).model_dump()
    assert schema["properties"]["destination"]["anyOf"][1] == {"$ref": "#/definitions/DuckDBWarehouse"}
    for value in (
        {"$ref": {"block_document_slug": "mixpanel-local-destination/local"}},
        {"$ref": {"block_document_id": "a812bd80-35aa-4a3c-a552-af455855a9ee"}},
        {"path": "data"},
    ):
        validate_values_conform_to_schema({"destination": value}, schema, ignore_required=True)  # creation
        validate({"destination": value}, schema, raise_on_error=True, ignore_required=True)  # update
    assert LocalDestination().path == "data", "the block itself still takes its defaults"


def test_a_destination_schema_is_prefects_made_once_and_handed_out_as_a_copy() -> None:
    """The flows nest the destinations many times over: their schemas are made once per class (see
    DestinationBlock.model_json_schema), and a caller that changes its copy changes no one else's."""
    prefects = Block.model_json_schema.__func__(DuckDBWarehouse)  # type: ignore[attr-defined]
    first = DuckDBWarehouse.model_json_schema()
    assert first == prefects
    first["properties"].clear()
    first["definitions"]["LocalDestination"]["properties"].clear()
    assert DuckDBWarehouse.model_json_schema() == prefects


def test_the_registry_lists_every_destination_block_once_with_its_true_kind() -> None:
    """Every destination block module's classes are in the registry (nothing listed elsewhere), and
    each entry's kind and capabilities are what the block is and does."""
    import importlib
    import inspect
    import tomllib

    from blocks.destinations import catalog, files
    from blocks.destinations.base import BucketDestination, DestinationBlock
    from blocks.destinations.registry import DESTINATIONS, Capability, Kind, entries

    folder = Path(catalog.__file__).parent
    defined = set()
    for path in folder.glob("*.py"):
        module = importlib.import_module(f"blocks.destinations.{path.stem}")
        defined |= {
            (module.__name__, name)
            for name, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, DestinationBlock)
            and cls.__module__ == module.__name__
            and not inspect.isabstract(cls)
        }
    assert defined == {(d.module, d.name) for d in DESTINATIONS}, "a block is missing from the registry"
    assert len({d.name for d in DESTINATIONS}) == len(DESTINATIONS)
    extras = tomllib.loads((folder.parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for entry in DESTINATIONS:
        block = entry.block()
        assert issubclass(block, BucketDestination) == (entry.kind == Kind.FILES), entry.name
        assert (entry.kind == Kind.TABLE_FORMAT) == (Capability.KEEPS_HISTORY in entry.capabilities), (
            entry.name
        )
        assert (Capability.CARRIES_TABLE_FORMATS in entry.capabilities) <= (entry.kind == Kind.FILES)
        assert entry.extra is None or entry.extra in extras, entry.name
        assert entry.installed()  # the suite runs with every extra
    # what the flows, registration and the blocks built on files offer comes from it
    assert tuple(d.block() for d in DESTINATIONS) == catalog.DESTINATIONS
    assert tuple(d.block() for d in entries(Kind.FILES)) == files.FILE_DESTINATIONS


def test_block_type_slugs_stay_what_saved_block_documents_reference() -> None:
    """Prefect derives each slug from the block type's name; saved blocks and deployments name them."""
    from blocks.gdpr import MixpanelGdprRegistry

    types: tuple[type[Block], ...] = (*BLOCK_TYPES, MixpanelGdprRegistry)
    slugs = {cls.__name__: cls.get_block_type_slug() for cls in types}
    assert slugs == {
        "MixpanelCredentials": "mixpanel-credentials",
        "MixpanelGdprCredentials": "mixpanel-gdpr-credentials",
        "MixpanelGdprRegistry": "mixpanel-gdpr-registry",
        "LocalDestination": "mixpanel-local-destination",
        "DuckDBWarehouse": "mixpanel-duckdb-warehouse",
        "SnowflakeWarehouse": "mixpanel-snowflake-warehouse",
        "BigQueryWarehouse": "mixpanel-bigquery-warehouse",
        "S3Destination": "mixpanel-s3-destination",
        "RedshiftSpectrumDestination": "mixpanel-redshift-spectrum-destination",
        "GcsDestination": "mixpanel-gcs-destination",
        "AzureBlobDestination": "mixpanel-azure-blob-destination",
        "DeltaLakeDestination": "mixpanel-delta-lake-destination",
        "IcebergDestination": "mixpanel-iceberg-destination",
    }
    for cls in BLOCK_TYPES:  # Prefect's own example: load the block by name from its module
        assert f"from {cls.__module__} import {cls.__name__}" in (cls.get_code_example() or "")
        assert f'{cls.__name__}.load("BLOCK_NAME")' in (cls.get_code_example() or "")
