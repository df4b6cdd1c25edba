"""BigQuery: a dataset holding the three tables, loaded from the committed Parquet files."""

from __future__ import annotations

from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from prefect_gcp import GcpCredentials
from pydantic import Field

from blocks.destinations.base import DestinationBlock
from blocks.destinations.files import FileDestination, files_field
from blocks.mixpanel import DOCS_URL
from tasks.lake.commit import Lake
from tasks.warehouses.bigquery_loader import BigQueryLoader
from tasks.warehouses.warehouse import WarehouseHook


class BigQueryWarehouse(DestinationBlock):
    """A BigQuery dataset with mp_master_event (partitioned by day, properties JSON) and the other tables."""

    _block_type_name = "Mixpanel BigQuery Warehouse"
    _documentation_url = DOCS_URL
    _description = (
        "BigQuery through prefect-gcp's GcpCredentials: each day's Parquet files are loaded into a staging "
        "table and swapped in by one atomic MERGE; mp_master_event is partitioned by day, properties is JSON."
    )

    credentials: GcpCredentials = Field(
        default=..., description="The prefect-gcp GcpCredentials block (service account and project)."
    )
    dataset: str = Field(default=..., description="The dataset (created beforehand) that holds the tables.")
    location: str = Field(default="US", description="The dataset's location, where the jobs run.")
    files: FileDestination = files_field("the tables are loaded from")

    api_endpoint: str | None = Field(
        default=None,
        description="Another BigQuery API endpoint (a private endpoint or an emulator); empty for Google's.",
    )

    def connect(self, project_id: int) -> Lake:
        lake = self.files.connect(project_id)
        loader = BigQueryLoader(self._client(), self.dataset)
        loader.check()
        return lake.with_hooks(WarehouseHook(loader))

    def _client(self) -> bigquery.Client:
        if self.api_endpoint is None:
            client: bigquery.Client = self.credentials.get_bigquery_client(location=self.location)
            return client
        keyed = self.credentials.service_account_info or self.credentials.service_account_file
        return bigquery.Client(
            project=self.credentials.project,
            credentials=self.credentials.get_credentials_from_service_account()
            if keyed
            else AnonymousCredentials(),
            location=self.location,
            client_options={"api_endpoint": self.api_endpoint},
        )
