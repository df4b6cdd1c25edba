"""Every destination block, once: its module, class, kind, capabilities and the extra that installs it.

The flows' destination parameter (``catalog.AnyDestination``), block registration
(``catalog.BLOCK_TYPES``) and the file destinations the warehouses and table formats accept
(``files.FileDestination``) are all read from ``DESTINATIONS``; nothing else lists them.

A destination whose Prefect integration is not installed (pyproject's extras: ``s3``, ``gcs``,
``bigquery``, ``azure``, ``snowflake``, ``delta``, ``iceberg``) is left out: importing an integration
costs a flow run 30-90 MiB (prefect-snowflake alone ~90), so a worker that writes a local folder
does not carry four clouds' SDKs. The local folder and DuckDB need no extra. Blocks are imported only
when asked for (``classes``), so this module can be read by anything without importing a cloud SDK.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    FILES = "files"  # the committed files and manifests themselves, in a folder or a bucket
    WAREHOUSE = "warehouse"  # tables loaded from a file destination's committed files
    TABLE_FORMAT = "table format"  # Delta or Iceberg tables written beside a file destination's files


class Capability(StrEnum):
    # a file destination that a table format (delta-rs, pyiceberg) can write its tables in
    CARRIES_TABLE_FORMATS = "carries table formats"
    # replaced versions stay readable (time travel): a GDPR purge must remove them too
    KEEPS_HISTORY = "keeps history"
    # the sync status is published where the destination's users query it (a view)
    PUBLISHES_STATUS = "publishes status"


@dataclass(frozen=True)
class Destination:
    module: str
    name: str  # the block class
    kind: Kind
    capabilities: frozenset[Capability] = frozenset()
    package: str | None = None  # the integration the block nests; None: always installed
    extra: str | None = None  # the pyproject extra that installs ``package``

    def installed(self) -> bool:
        return self.package is None or installed(self.package)

    def block(self) -> type[Any]:
        found: type[Any] = getattr(importlib.import_module(self.module), self.name)
        return found


def _caps(*capabilities: Capability) -> frozenset[Capability]:
    return frozenset(capabilities)


# in the order the UI lists them
DESTINATIONS = (
    Destination(
        "blocks.destinations.local", "LocalDestination", Kind.FILES, _caps(Capability.CARRIES_TABLE_FORMATS)
    ),
    Destination(
        "blocks.destinations.duckdb", "DuckDBWarehouse", Kind.WAREHOUSE, _caps(Capability.PUBLISHES_STATUS)
    ),
    Destination(
        "blocks.destinations.snowflake",
        "SnowflakeWarehouse",
        Kind.WAREHOUSE,
        _caps(Capability.PUBLISHES_STATUS),
        "prefect_snowflake",
        "snowflake",
    ),
    Destination(
        "blocks.destinations.bigquery",
        "BigQueryWarehouse",
        Kind.WAREHOUSE,
        _caps(Capability.PUBLISHES_STATUS),
        "google.cloud.bigquery",
        "bigquery",
    ),
    Destination(
        "blocks.destinations.s3",
        "S3Destination",
        Kind.FILES,
        _caps(Capability.CARRIES_TABLE_FORMATS),
        "prefect_aws",
        "s3",
    ),
    Destination(
        "blocks.destinations.spectrum",
        "RedshiftSpectrumDestination",
        Kind.WAREHOUSE,
        _caps(Capability.PUBLISHES_STATUS),
        "prefect_aws",
        "s3",
    ),
    Destination("blocks.destinations.gcs", "GcsDestination", Kind.FILES, _caps(), "prefect_gcp", "gcs"),
    Destination(
        "blocks.destinations.azure",
        "AzureBlobDestination",
        Kind.FILES,
        _caps(Capability.CARRIES_TABLE_FORMATS),
        "prefect_azure",
        "azure",
    ),
    Destination(
        "blocks.destinations.delta",
        "DeltaLakeDestination",
        Kind.TABLE_FORMAT,
        _caps(Capability.KEEPS_HISTORY),
        "deltalake",
        "delta",
    ),
    Destination(
        "blocks.destinations.iceberg",
        "IcebergDestination",
        Kind.TABLE_FORMAT,
        _caps(Capability.KEEPS_HISTORY),
        "pyiceberg",
        "iceberg",
    ),
)


def installed(package: str) -> bool:
    """Whether ``package`` (an integration a block nests) is installed."""
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def entries(kind: Kind | None = None, capability: Capability | None = None) -> tuple[Destination, ...]:
    """The installed destinations (of ``kind``, with ``capability``), in the UI's order."""
    return tuple(
        d
        for d in DESTINATIONS
        if (kind is None or d.kind == kind)
        and (capability is None or capability in d.capabilities)
        and d.installed()
    )


def classes(kind: Kind | None = None, capability: Capability | None = None) -> tuple[type[Any], ...]:
    """The block classes of ``entries(kind, capability)``."""
    return tuple(d.block() for d in entries(kind, capability))
