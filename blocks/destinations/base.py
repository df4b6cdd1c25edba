"""What every destination block offers the flows: a runtime destination for one project."""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any

from prefect.blocks.core import Block, schema_extra
from pydantic import AfterValidator, ConfigDict

from tasks.errors import FatalError
from tasks.lake.commit import Lake
from tasks.lake.store import RetryPolicy, Store
from tasks.warehouses.tableformat import Location, Style
from tasks.warehouses.warehouse import checked_identifier


def plain_name(what: str) -> Any:
    """A field validator: ``what`` goes into SQL or catalog calls, so only plain identifiers pass."""

    def check(value: str) -> str:
        try:
            return checked_identifier(value, what)
        except FatalError as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(check)


# fields added after blocks and deployment parameters were saved without them: never listed as
# required, so those saved values still pass the server's checks (one required field already tells
# a block from a reference)
ADDED_LATER = frozenset({"create_missing"})


def _schema_refusing_bare_references(schema: dict[str, Any], model: type[Block]) -> None:
    """Prefect's block schema, with the fields that have defaults listed as required.

    Prefect's server checks a deployment's parameters twice, with every ``required`` removed but
    those inside lists: on creation against the schema as it is, on update (`make deploy` pinning
    block references by id) against ``oneOf`` [the block's schema, a ``{"$ref": ...}`` reference]. A
    block whose fields all have defaults (LocalDestination, DuckDBWarehouse) matches a reference
    both ways, which ``oneOf`` refuses: with no destination of another kind installed, no reference
    could be pinned. Listing those fields as required (the form shows them filled with their
    defaults; the block itself still accepts them left out) makes the reference match once.
    """
    schema_extra(schema, model)
    if not schema.get("required"):
        defaulted = [
            name
            for name, field in schema.get("properties", {}).items()
            if "default" in field and name not in ADDED_LATER
        ]
        if defaulted:
            schema["required"] = defaulted


_SCHEMAS: dict[tuple[Any, ...], dict[str, Any]] = {}


class DestinationBlock(Block):
    """Base of the destination blocks; flows only call ``connect``."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_schema_refusing_bare_references)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Prefect's block schema, made once per class and handed out as a copy.

        Prefect makes a block's schema again for every block that nests it (to checksum it), and the
        flows' destination parameter nests the file destinations in the warehouses and the table
        formats: importing the seven flows made ~470 schemas, ~3.7 s of CPU in every process that
        imports them (a flow run, a worker)."""
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _SCHEMAS:
            _SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(_SCHEMAS[key])

    @abstractmethod
    def connect(self, project_id: int) -> Lake:
        """The destination for one Mixpanel project, checked to be writable."""


def block_label(block: Block, kind: str, bucket: str) -> str:
    """How error sentences name a referenced bucket block: by its saved name when it has one."""
    name = getattr(block, "_block_document_name", None)
    return f"{kind} block '{name}' (bucket {bucket})" if name else f"the {kind} block for bucket {bucket}"


def root_of(*folders: str) -> str:
    """The destination root inside the bucket: the bucket block's folder, then the prefix."""
    return "/".join(f.strip("/") for f in folders if f and f.strip("/"))


class BucketDestination(DestinationBlock):
    """A destination made of files in one store: the block's fields build the store, ``connect`` probes it."""

    @abstractmethod
    def store(self, retry: RetryPolicy | None = None) -> Store:
        """The store of this block's bucket and folder (no request made yet)."""

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy()

    @abstractmethod
    def table_location(self, project_id: int, folder: str, style: Style) -> Location:
        """Where a table format writes the project's tables (``<root>/<project_id>/<folder>``, from
        ``tasks.lake.layout``) and the options its library reads to get there (``style``: delta-rs's
        object_store keys or pyiceberg's FileIO properties), with this block's own credentials.
        A destination a table format cannot be written on says why, in one sentence."""

    def connect(self, project_id: int) -> Lake:
        store = self.store()
        store.probe()  # one sentence naming the block, the right and the fix if anything is missing
        return Lake(store, project_id)
