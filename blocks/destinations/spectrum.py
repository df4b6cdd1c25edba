"""Redshift Spectrum: the tables as files in S3 (an S3 destination) plus a Glue catalog over them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from blocks.destinations.base import DestinationBlock, plain_name
from blocks.destinations.s3 import S3Destination
from blocks.mixpanel import DOCS_URL
from tasks.lake.commit import Lake
from tasks.warehouses.glue import GlueCatalog
from tasks.warehouses.warehouse import WarehouseHook


class RedshiftSpectrumDestination(DestinationBlock):
    """S3 files in Mixpanel's layout, with Glue external tables that Redshift Spectrum and Athena query."""

    _block_type_name = "Mixpanel Redshift Spectrum Destination"
    _documentation_url = DOCS_URL
    _description = (
        "The tables as Parquet files in S3 (an S3 destination) and a Glue database whose external "
        "tables follow each committed day (partitions mp_date=YYYY-MM-DD), for Redshift Spectrum or Athena."
    )

    s3: S3Destination = Field(
        default=...,
        description="Where the files go (its AwsCredentials also reach Glue, in the same region).",
    )
    glue_database: Annotated[str, plain_name("Glue database")] = Field(
        default=...,
        description="The Glue database holding the external tables (created beforehand; the tables are "
        "created in it on the first run).",
    )

    def connect(self, project_id: int) -> Lake:
        lake = self.s3.connect(project_id)
        glue = self.s3.bucket.credentials.get_client("glue")
        catalog = GlueCatalog(glue, self.glue_database, lake.storage, lake.layout.spectrum_prefix())
        catalog.check()
        return lake.with_hooks(WarehouseHook(catalog))
