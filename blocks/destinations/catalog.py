"""Every block of the project in one place: the flows' destination parameter type, and registration.

`prefect block register -m blocks.destinations.catalog` registers every block type below at once.
Which destinations there are, and which are installed, is ``blocks.destinations.registry``'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from prefect.blocks.core import Block

from blocks.destinations.registry import classes
from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials

DESTINATIONS: tuple[type[Any], ...] = classes()

if TYPE_CHECKING:
    # what the flows call on any destination (connect) is the base's: the checker needs no member list
    from blocks.destinations.base import DestinationBlock

    AnyDestination = DestinationBlock
else:
    # the flows' parameter type: Prefect's UI offers one block picker per member
    AnyDestination = Union[DESTINATIONS]  # noqa: UP007  (a union built at run time)

BLOCK_TYPES: tuple[type[Block], ...] = (MixpanelCredentials, MixpanelGdprCredentials, *DESTINATIONS)

# `prefect block register -m blocks.destinations.catalog` registers the Block classes it finds as
# attributes of this module: name the installed optional ones here too
for _block in DESTINATIONS:
    globals().setdefault(_block.__name__, _block)
del _block
