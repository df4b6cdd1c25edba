"""What every destination block offers the flows: a runtime destination for one project."""

from __future__ import annotations

from abc import abstractmethod

from prefect.blocks.core import Block

from tasks.objectstore import ObjectStoreDestination


class DestinationBlock(Block):
    """Base of the destination blocks; flows only call ``connect``."""

    @abstractmethod
    def connect(self, project_id: int) -> ObjectStoreDestination:
        """The destination for one Mixpanel project, checked to be writable."""
