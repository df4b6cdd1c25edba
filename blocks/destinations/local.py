"""The embedded default destination: a folder on the worker's disk."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from blocks.destinations.base import BucketDestination
from blocks.mixpanel import DOCS_URL
from tasks.errors import FatalError, MissingDestinationError
from tasks.lake.layout import Layout
from tasks.lake.store import LocalStore, RetryPolicy
from tasks.warehouses.tableformat import Location, Style

# the embedded default: `data` in the worker's working directory, the product's own folder (never a
# mount point a user names), so it is created when missing, like the demo's and make deploy's
DEFAULT_FOLDER = Path("data")


class LocalDestination(BucketDestination):
    """A local folder that receives Mixpanel's layout: <path>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel Local Destination"
    _documentation_url = DOCS_URL
    _description = "A folder on the worker's disk that receives the exported tables (the embedded default)."

    path: str = Field(
        default=str(DEFAULT_FOLDER),
        description="Folder that receives the tables; relative paths are relative to the worker's "
        "working directory.",
    )

    create_missing: bool = Field(
        default=False,
        description="Create the folder (and its parents) when it does not exist. Off: a missing folder "
        "is refused, so an unmounted volume or a mistyped path never fills the worker's own disk (the "
        "default folder, data, is always created).",
    )

    def store(self, retry: RetryPolicy | None = None) -> LocalStore:
        root = Path(self.path).expanduser()
        ensure_folder(root, self.create_missing, "LocalDestination", "destination folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalError(
                f"cannot write to the destination folder {root.resolve()} ({exc.strerror}): "
                "choose a writable path in the LocalDestination block."
            ) from exc
        return LocalStore(root)

    def table_location(self, project_id: int, folder: str, style: Style) -> Location:
        own = Layout(str(project_id)).table_format_prefix(folder)
        return Location(str(Path(self.path).expanduser().resolve() / own))


def ensure_folder(folder: Path, create_missing: bool, block: str, what: str) -> None:
    """Refuse a missing ``folder`` unless the block allows creating it, or it is the embedded default
    (the caller creates it)."""
    if create_missing or folder.exists() or folder == DEFAULT_FOLDER:
        return
    # an unmounted volume or a typo: creating it would fill the worker's own disk
    raise MissingDestinationError(
        f"the {what} {folder.absolute()} does not exist, so nothing was written: mount or create it, "
        f"or set create_missing=true in the {block} block to have it created."
    )
