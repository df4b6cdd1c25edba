"""The embedded default destination: a folder on the worker's disk."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from blocks.destinations.base import BucketDestination
from blocks.mixpanel import DOCS_URL
from tasks.errors import FatalError
from tasks.lake.store import LocalStore, RetryPolicy


class LocalDestination(BucketDestination):
    """A local folder that receives Mixpanel's layout: <path>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel Local Destination"
    _block_type_slug = "mixpanel-local-destination"
    _documentation_url = DOCS_URL
    _description = "A folder on the worker's disk that receives the exported tables (the embedded default)."
    _code_example = """
```python
from blocks.destinations.local import LocalDestination

destination = LocalDestination.load("BLOCK_NAME")
```
"""

    path: str = Field(
        default="data",
        description="Folder that receives the tables; relative paths are relative to the worker's "
        "working directory.",
    )

    def store(self, retry: RetryPolicy | None = None) -> LocalStore:
        root = Path(self.path).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalError(
                f"cannot write to the destination folder {root.resolve()} ({exc.strerror}): "
                "choose a writable path in the LocalDestination block."
            ) from exc
        return LocalStore(root)
