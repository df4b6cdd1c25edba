"""The file destinations (a local folder, S3, GCS, Azure Blob), for the blocks built on one: the
warehouses stage their loads in one, and so do the table formats.

Only the destinations whose integration is installed are offered (pyproject's extras); a field that
takes a file destination also takes a plain folder path, as blocks saved before it did.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BeforeValidator, Field

from blocks.destinations.local import LocalDestination


def installed(package: str) -> bool:
    """Whether ``package`` (an integration a block nests) is installed."""
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def blocks_of(optional: tuple[tuple[str, str, str, str], ...]) -> tuple[type[Any], ...]:
    """The block classes of ``(module, class, package, extra)`` rows whose package is installed."""
    return tuple(
        getattr(importlib.import_module(module), name)
        for module, name, package, _ in optional
        if installed(package)
    )


OPTIONAL_FILE_DESTINATIONS = (
    ("blocks.destinations.s3", "S3Destination", "prefect_aws", "s3"),
    ("blocks.destinations.gcs", "GcsDestination", "prefect_gcp", "gcs"),
    ("blocks.destinations.azure", "AzureBlobDestination", "prefect_azure", "azure"),
)
FILE_DESTINATIONS: tuple[type[Any], ...] = (LocalDestination, *blocks_of(OPTIONAL_FILE_DESTINATIONS))

if TYPE_CHECKING:
    from blocks.destinations.azure import AzureBlobDestination
    from blocks.destinations.gcs import GcsDestination
    from blocks.destinations.s3 import S3Destination

    FileDestination = LocalDestination | S3Destination | GcsDestination | AzureBlobDestination
else:

    def _folder_or_destination(value: Any) -> Any:
        """A plain path (what a saved block may hold) is a local folder."""
        return LocalDestination(path=value) if isinstance(value, str) else value

    # a union built at run time; a plain path validates as a local folder
    FileDestination = Annotated[Union[FILE_DESTINATIONS], BeforeValidator(_folder_or_destination)]  # noqa: UP007


def files_field(what: str) -> Any:
    return Field(
        default_factory=lambda: LocalDestination(path="data"),
        description=f"Where the committed files and manifests {what} live: a local folder, or a bucket "
        "(S3, GCS, Azure) whose files are fetched to local scratch for each load. A plain path is a local folder.",
    )
