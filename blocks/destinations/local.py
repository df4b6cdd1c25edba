"""The embedded default destination: a folder on the worker's disk."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pydantic import Field

from blocks.destinations.base import DestinationBlock
from blocks.mixpanel import DOCS_URL
from tasks.errors import FatalError
from tasks.objectstore import ObjectStoreDestination
from tasks.storage import LocalStorage


class LocalDestination(DestinationBlock):
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

    def connect(self, project_id: int) -> ObjectStoreDestination:
        root = Path(self.path).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f"_probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise FatalError(
                f"cannot write to the destination folder {root.resolve()} ({exc.strerror}): "
                "choose a writable path in the LocalDestination block."
            ) from exc
        if not os.access(root, os.W_OK):
            raise FatalError(f"the destination folder {root.resolve()} is not writable: choose another path.")
        return ObjectStoreDestination(LocalStorage(root), project_id)
