"""DuckDB, the embedded warehouse: a database file, with the Parquet files it loads from beside it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from blocks.destinations.base import DestinationBlock
from blocks.destinations.files import FileDestination, files_field
from blocks.destinations.local import ensure_folder
from blocks.mixpanel import DOCS_URL
from tasks.lake.commit import Lake
from tasks.warehouses.duckdb_loader import DuckDBLoader
from tasks.warehouses.warehouse import WarehouseHook


class DuckDBWarehouse(DestinationBlock):
    """A DuckDB database file holding mp_master_event, mp_people_data and mp_identity_mappings_data."""

    _block_type_name = "Mixpanel DuckDB Warehouse"
    _documentation_url = DOCS_URL
    _description = (
        "An embedded DuckDB database: each exported day is replaced in one transaction; people and "
        "identity tables are swapped whole. The Parquet files it loads from are kept beside it."
    )

    database: str = Field(
        default="data/mixpanel.duckdb",
        description="Path of the DuckDB database file (created if missing, in a folder that must exist "
        "unless create_missing); relative to the worker's working directory.",
    )
    files: FileDestination = files_field("the database is loaded from")

    lock_wait_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long a load waits for another process that is writing the database.",
    )

    memory_limit_mb: int = Field(
        default=512,
        gt=0,
        description="Memory DuckDB may use while loading (it spills to disk beyond it); DuckDB's own "
        "default is 80% of the machine's RAM.",
    )

    create_missing: bool = Field(
        default=False,
        description="Create the database's folder (and its parents) when it does not exist. Off: a "
        "missing folder is refused, so an unmounted volume or a mistyped path never fills the worker's "
        "own disk. The files' folder has its own setting.",
    )

    def connect(self, project_id: int) -> Lake:
        lake = self.files.connect(project_id)
        database = Path(self.database).expanduser()
        ensure_folder(
            database.parent, self.create_missing, "DuckDBWarehouse", "folder of the DuckDB database"
        )
        loader = DuckDBLoader(database, self.lock_wait_seconds, self.memory_limit_mb)
        loader.check()
        return lake.with_hooks(WarehouseHook(loader))
