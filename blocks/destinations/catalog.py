"""Every block of the project in one place: the flows' destination parameter type, and registration.

`prefect block register -m blocks.destinations.catalog` registers every block type below at once.
"""

from __future__ import annotations

from blocks.destinations.azure import AzureBlobDestination
from blocks.destinations.bigquery import BigQueryWarehouse
from blocks.destinations.delta import DeltaLakeDestination
from blocks.destinations.duckdb import DuckDBWarehouse
from blocks.destinations.gcs import GcsDestination
from blocks.destinations.iceberg import IcebergDestination
from blocks.destinations.local import LocalDestination
from blocks.destinations.s3 import S3Destination
from blocks.destinations.snowflake import SnowflakeWarehouse
from blocks.destinations.spectrum import RedshiftSpectrumDestination
from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials

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

BLOCK_TYPES = (
    MixpanelCredentials,
    MixpanelGdprCredentials,
    LocalDestination,
    DuckDBWarehouse,
    SnowflakeWarehouse,
    BigQueryWarehouse,
    S3Destination,
    RedshiftSpectrumDestination,
    GcsDestination,
    AzureBlobDestination,
    DeltaLakeDestination,
    IcebergDestination,
)
