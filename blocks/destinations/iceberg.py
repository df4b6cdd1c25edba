"""Apache Iceberg tables beside a file destination (local folder, S3, Azure Blob), written by pyiceberg."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pyiceberg.catalog import load_catalog

from blocks.destinations.base import DestinationBlock, plain_name
from blocks.destinations.files import FileDestination
from blocks.destinations.local import LocalDestination
from blocks.mixpanel import DOCS_URL
from tasks.lake.commit import Lake
from tasks.warehouses.iceberg_format import (
    IcebergFormat,
    catalog_properties,
    default_catalog_name,
    holds_own_tables,
)
from tasks.warehouses.tableformat import Location, TableFormatHook

# the SQL catalog keys its rows by this name: readers load_catalog("mixpanel", ...) to see the tables
CATALOG_NAME = "mixpanel"
# the default catalog of every bucket-backed destination of a worker before defaults were per root:
# still used by a destination whose tables it already registers (a new file would not know them)
SHARED_CATALOG = Path("data") / "iceberg-catalog.db"


class IcebergDestination(DestinationBlock):
    """Iceberg tables mp_master_event (partitioned by day), mp_people_data, mp_identity_mappings_data."""

    _block_type_name = "Mixpanel Iceberg Destination"
    _documentation_url = DOCS_URL
    _description = (
        "Apache Iceberg tables under <root>/<project_id>/iceberg/, registered in a SQL (SQLite), Glue or "
        "REST catalog: each exported day replaced in one snapshot, hourly increments appended, people "
        "and identity tables overwritten whole."
    )

    files: FileDestination = Field(
        default_factory=lambda: LocalDestination(path="data"),
        description="The file destination (a local folder, an S3 bucket or an Azure container) that holds the tables, the "
        "manifests and the state; the Iceberg tables go under <its root>/<project_id>/iceberg/.",
    )
    catalog: Literal["sql", "glue", "rest"] = Field(
        default="sql",
        description="sql: an embedded SQLite catalog file (one worker machine); glue: AWS Glue with the S3 "
        "destination's credentials; rest: an Iceberg REST catalog at catalog_uri.",
    )
    catalog_uri: str = Field(
        default="",
        description="sql: a SQLAlchemy URL (empty: sqlite:///<local root>/<project_id>/iceberg/catalog.db, or "
        "data/iceberg-catalogs/<bucket-prefix-project>-<hash>.db on the worker, one per root and project, "
        "when the files are in a bucket); rest: the catalog's URL.",
    )
    catalog_token: SecretStr | None = Field(
        default=None, description="rest: a bearer token for the REST catalog (optional)."
    )
    namespace: Annotated[str, plain_name("Iceberg namespace")] = Field(
        default="mixpanel", description="The catalog namespace (Glue: database) of the tables."
    )
    retention_hours: int = Field(
        default=168,
        ge=0,
        description="How long replaced snapshots stay readable by time travel; the upkeep flow expires "
        "older ones, a GDPR purge expires the purged rows' snapshots at once.",
    )

    def _catalog_uri(self, location: Location, options: dict[str, str]) -> str:
        """The catalog given, or the default one of this root and project (never one shared by accident)."""
        if self.catalog_uri or self.catalog != "sql":
            return self.catalog_uri
        if isinstance(self.files, LocalDestination):
            path = Path(location.uri) / "catalog.db"
        else:
            shared = SHARED_CATALOG.resolve()
            if shared.exists():
                uri = f"sqlite:///{shared}"
                found = load_catalog(CATALOG_NAME, **catalog_properties("sql", uri, location.uri, options))
                if holds_own_tables(found, self.namespace, location):
                    return uri
            path = Path("data").resolve() / "iceberg-catalogs" / default_catalog_name(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    def connect(self, project_id: int) -> Lake:
        lake = self.files.connect(project_id)
        location = self.files.table_location(project_id, "iceberg", "iceberg")
        options = dict(location.options)
        if self.catalog == "glue":
            options |= _glue_options(options)
        if self.catalog == "rest" and self.catalog_token is not None:
            options["token"] = self.catalog_token.get_secret_value()
        properties = catalog_properties(
            self.catalog, self._catalog_uri(location, options), location.uri, options
        )
        catalog = load_catalog(CATALOG_NAME, **properties)
        table_format = IcebergFormat(
            catalog,
            self.namespace,
            location,
            lake.storage,
            lake.layout.table_format_prefix("iceberg"),
            self.retention_hours,
        )
        table_format.check()
        return lake.with_hooks(TableFormatHook(table_format))


def _glue_options(s3: dict[str, str]) -> dict[str, str]:
    """Glue reaches AWS with the S3 destination's credentials and region (and its endpoint, for tests)."""
    names = {
        "s3.access-key-id": "glue.access-key-id",
        "s3.secret-access-key": "glue.secret-access-key",
        "s3.session-token": "glue.session-token",
        "s3.region": "glue.region",
        "s3.endpoint": "glue.endpoint",
    }
    return {glue: s3[key] for key, glue in names.items() if key in s3}
