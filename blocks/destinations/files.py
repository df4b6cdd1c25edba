"""The file destinations (a local folder, S3, GCS, Azure Blob), for the blocks built on one: the
warehouses stage their loads in one, and so do the table formats.

Only the destinations whose integration is installed are offered (pyproject's extras); a field that
takes a file destination also takes a plain folder path, as blocks saved before it did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BeforeValidator, Field

from blocks.destinations.local import LocalDestination
from blocks.destinations.registry import Kind, classes

FILE_DESTINATIONS: tuple[type[Any], ...] = classes(Kind.FILES)

if TYPE_CHECKING:
    # what the blocks built on one call (connect, store, table_location) is the base's
    from blocks.destinations.base import BucketDestination

    FileDestination = BucketDestination
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
