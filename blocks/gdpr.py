"""The Prefect blocks of GDPR: the tokens Mixpanel's GDPR API wants (not the export's service
account), and the project's deletion registry.

The project's registry is a block document named ``project-<project_id>`` in the workspace, the one
place every destination of a project shares: the ids deleted under GDPR/CCPA, in a ``SecretDict``
(encrypted at rest, never shown by the UI or API). It only grows: every write is a union with what
the workspace holds. Each destination keeps its own registry too (``tasks.sync.registry``); a
write lost to a concurrent one is restored by the next flow run, which unions them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import msgspec
from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, SecretStr

from blocks.mixpanel import DOCS_URL
from tasks.mixpanel.settings import GdprSettings
from tasks.sync.registry import Deletion, Registry, shared


class MixpanelGdprCredentials(Block):
    """Project token and GDPR OAuth token for Mixpanel's data-deletion API."""

    _block_type_name = "Mixpanel GDPR Credentials"
    _documentation_url = DOCS_URL
    _description = (
        "Project token and GDPR OAuth token used by the GDPR flow to ask Mixpanel to delete users' data."
    )

    project_token: SecretStr = Field(
        default=..., description="The project's token (Project Settings > Access Keys)."
    )
    oauth_token: SecretStr = Field(
        default=...,
        description="GDPR OAuth token (Personal Settings > Data & Privacy); Mixpanel makes it valid for one year.",
    )

    def settings(self) -> GdprSettings:
        """The tokens as the GDPR client takes them."""
        return GdprSettings(self.project_token.get_secret_value(), self.oauth_token.get_secret_value())


class MixpanelGdprRegistry(Block):
    """The ids of a Mixpanel project deleted under GDPR/CCPA: never exported again anywhere."""

    _block_type_name = "Mixpanel GDPR Registry"
    _documentation_url = DOCS_URL
    _description = (
        "The project's GDPR/CCPA deletion registry, written by the GDPR flow and read by every export: "
        "ids here are never exported again into any destination of the project. Do not edit by hand."
    )

    deletions: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        description="Each deleted id with how it was registered and its identity cluster.",
    )


def registry_name(project_id: int) -> str:
    return f"project-{project_id}"


def load_project_registry(project_id: int) -> dict[str, Deletion]:
    """The project's deletions; none if nothing was registered yet (an unreachable API raises)."""
    try:
        block = cast("MixpanelGdprRegistry", MixpanelGdprRegistry.load(registry_name(project_id)))
    except ValueError:  # no such document (or block type) yet
        return {}
    return msgspec.convert(block.deletions.get_secret_value(), dict[str, Deletion])


def save_project_registry(project_id: int, deletions: Mapping[str, Deletion]) -> None:
    """Store ``deletions`` united with what the workspace holds now, so a write never drops an id."""
    current = load_project_registry(project_id)
    if set(deletions) <= set(current) and all(
        set(d.cluster) <= set(current[k].cluster) for k, d in deletions.items()
    ):
        return
    union = shared([Registry(dict(deletions))], current)
    MixpanelGdprRegistry(deletions=SecretDict(msgspec.to_builtins(union))).save(
        registry_name(project_id), overwrite=True
    )
