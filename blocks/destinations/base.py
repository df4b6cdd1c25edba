"""What every destination block offers the flows: a runtime destination for one project."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from prefect.blocks.core import Block
from pydantic import AfterValidator

from tasks.errors import FatalError
from tasks.lake.commit import ObjectStoreDestination
from tasks.lake.store import RetryPolicy, Store
from tasks.warehouses.warehouse import checked_identifier


def plain_name(what: str) -> Any:
    """A field validator: ``what`` goes into SQL or catalog calls, so only plain identifiers pass."""

    def check(value: str) -> str:
        try:
            return checked_identifier(value, what)
        except FatalError as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(check)


class DestinationBlock(Block):
    """Base of the destination blocks; flows only call ``connect``."""

    @abstractmethod
    def connect(self, project_id: int) -> ObjectStoreDestination:
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

    def connect(self, project_id: int) -> ObjectStoreDestination:
        store = self.store()
        store.probe()  # one sentence naming the block, the right and the fix if anything is missing
        return ObjectStoreDestination(store, project_id)
