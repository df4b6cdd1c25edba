"""Every destination block the flows accept, in one place (flow parameters and block registration)."""

from __future__ import annotations

from blocks.destinations.azure import AzureBlobDestination
from blocks.destinations.gcs import GcsDestination
from blocks.destinations.local import LocalDestination
from blocks.destinations.s3 import S3Destination

AnyDestination = LocalDestination | S3Destination | GcsDestination | AzureBlobDestination

# `prefect block register -m <module>` for each, so the UI offers every block type
BLOCK_MODULES = (
    "blocks.mixpanel",
    "blocks.destinations.local",
    "blocks.destinations.s3",
    "blocks.destinations.azure",
)
