"""Every block of the project in one place: the flows' destination parameter type, and registration.

`prefect block register -m blocks.destinations.catalog` registers every block type below at once.

A destination whose Prefect integration is not installed (pyproject's extras: `s3`, `gcs`,
`bigquery`, `azure`, `snowflake`, `delta`, `iceberg`) is left out of both: importing an integration costs a flow run
30-90 MiB (prefect-snowflake alone ~90), so a worker that writes a local folder should not carry
four clouds' SDKs. The local folder and DuckDB need no extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from prefect.blocks.core import Block

from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.files import blocks_of
from blocks.destinations.local import LocalDestination
from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials

# (module, class, the package its block nests, the pyproject extra that installs it), in the order
# the UI lists them
OPTIONAL = (
    ("blocks.destinations.snowflake", "SnowflakeWarehouse", "prefect_snowflake", "snowflake"),
    ("blocks.destinations.bigquery", "BigQueryWarehouse", "google.cloud.bigquery", "bigquery"),
    ("blocks.destinations.s3", "S3Destination", "prefect_aws", "s3"),
    ("blocks.destinations.spectrum", "RedshiftSpectrumDestination", "prefect_aws", "s3"),
    ("blocks.destinations.gcs", "GcsDestination", "prefect_gcp", "gcs"),
    ("blocks.destinations.azure", "AzureBlobDestination", "prefect_azure", "azure"),
    ("blocks.destinations.delta", "DeltaLakeDestination", "deltalake", "delta"),
    ("blocks.destinations.iceberg", "IcebergDestination", "pyiceberg", "iceberg"),
)


DESTINATIONS: tuple[type[Any], ...] = (LocalDestination, DuckDBWarehouse, *blocks_of(OPTIONAL))

if TYPE_CHECKING:
    from blocks.destinations.azure import AzureBlobDestination
    from blocks.destinations.bigquery import BigQueryWarehouse
    from blocks.destinations.delta import DeltaLakeDestination
    from blocks.destinations.gcs import GcsDestination
    from blocks.destinations.iceberg import IcebergDestination
    from blocks.destinations.s3 import S3Destination
    from blocks.destinations.snowflake import SnowflakeWarehouse
    from blocks.destinations.spectrum import RedshiftSpectrumDestination

    AnyDestination = (
        LocalDestination
        | DuckDBWarehouse
        | SnowflakeWarehouse
        | BigQueryWarehouse
        | S3Destination
        | RedshiftSpectrumDestination
        | GcsDestination
        | AzureBlobDestination
        | DeltaLakeDestination
        | IcebergDestination
    )
else:
    # the flows' parameter type: Prefect's UI offers one block picker per member
    AnyDestination = Union[DESTINATIONS]  # noqa: UP007  (a union built at run time)

BLOCK_TYPES: tuple[type[Block], ...] = (MixpanelCredentials, MixpanelGdprCredentials, *DESTINATIONS)

# `prefect block register -m blocks.destinations.catalog` registers the Block classes it finds as
# attributes of this module: name the installed optional ones here too
for _block in DESTINATIONS:
    globals().setdefault(_block.__name__, _block)
del _block
