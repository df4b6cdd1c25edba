"""Delta Lake tables beside a file destination (local folder, S3, Azure Blob), written by delta-rs."""

from __future__ import annotations

from pydantic import Field

from blocks.destinations.base import DestinationBlock
from blocks.destinations.files import FileDestination
from blocks.destinations.local import LocalDestination
from blocks.mixpanel import DOCS_URL
from tasks.lake.commit import Lake
from tasks.warehouses.delta_format import DeltaFormat
from tasks.warehouses.tableformat import TableFormatHook


class DeltaLakeDestination(DestinationBlock):
    """Delta tables mp_master_event (partitioned by day), mp_people_data, mp_identity_mappings_data."""

    _block_type_name = "Mixpanel Delta Lake Destination"
    _documentation_url = DOCS_URL
    _description = (
        "Delta Lake tables under <root>/<project_id>/delta/: each exported day replaced in one Delta "
        "commit, hourly increments appended, people and identity tables overwritten whole. The staged "
        "files and manifests stay in the wrapped file destination."
    )

    files: FileDestination = Field(
        default_factory=lambda: LocalDestination(path="data"),
        description="The file destination (a local folder, an S3 bucket or an Azure container) that holds the tables, the "
        "manifests and the state; the Delta tables go under <its root>/<project_id>/delta/.",
    )
    retention_hours: int = Field(
        default=168,
        ge=0,
        description="How long replaced versions stay readable by time travel (Delta's default: 7 days); "
        "the upkeep flow removes older ones, a GDPR purge removes the purged rows' versions at once.",
    )
    target_file_mb: int = Field(
        default=128, gt=0, description="Size of the files written and compacted by the upkeep flow."
    )

    def connect(self, project_id: int) -> Lake:
        lake = self.files.connect(project_id)
        table_format = DeltaFormat(
            self.files.table_location(project_id, "delta", "delta"), self.retention_hours, self.target_file_mb
        )
        table_format.check()
        return lake.with_hooks(TableFormatHook(table_format))
