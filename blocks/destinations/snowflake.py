"""Snowflake: a schema holding the three tables, loaded from the committed Parquet files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_snowflake import SnowflakeConnector
from pydantic import Field

from blocks.destinations.base import DestinationBlock
from blocks.destinations.files import FileDestination, files_field
from blocks.mixpanel import DOCS_URL
from tasks.lake.commit import Lake
from tasks.warehouses.snowflake_loader import SnowflakeLoader
from tasks.warehouses.warehouse import WarehouseHook

if TYPE_CHECKING:
    from snowflake.connector import SnowflakeConnection


class SnowflakeWarehouse(DestinationBlock):
    """A Snowflake schema (the connector block's database and schema) with the Json Pipelines tables."""

    _block_type_name = "Mixpanel Snowflake Warehouse"
    _documentation_url = DOCS_URL
    _description = (
        "Snowflake through a prefect-snowflake SnowflakeConnector: each day's Parquet files are PUT to an "
        "internal stage, COPY'd into a staging table and swapped in by one transaction; properties is VARIANT."
    )

    connector: SnowflakeConnector = Field(
        default=...,
        description="The prefect-snowflake SnowflakeConnector block: credentials, warehouse, database "
        "and schema (which must exist; the tables are created on the first run).",
    )
    files: FileDestination = files_field("the tables are loaded from")

    def connect(self, project_id: int) -> Lake:
        lake = self.files.connect(project_id)
        where = f"{self.connector.database}.{self.connector.schema_}"
        loader = SnowflakeLoader(self._connection, where)
        loader.check()
        return lake.with_hooks(WarehouseHook(loader))

    def _connection(self) -> SnowflakeConnection:
        """A new DB-API connection per load (the block caches one, which threads must not share)."""
        connection: SnowflakeConnection = self.connector.credentials.get_client(
            database=self.connector.database,
            schema=self.connector.schema_,
            warehouse=self.connector.warehouse,
            # values travel as bindings, never inside the SQL text (manifests hold `$` event names,
            # which client-side interpolation would put in a string literal)
            paramstyle="qmark",
        )
        return connection
