"""The Prefect block with the tokens Mixpanel's GDPR API wants (not the export's service account)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from blocks.mixpanel import DOCS_URL
from tasks.mixpanel.settings import GdprSettings


class MixpanelGdprCredentials(Block):
    """Project token and GDPR OAuth token for Mixpanel's data-deletion API."""

    _block_type_name = "Mixpanel GDPR Credentials"
    _block_type_slug = "mixpanel-gdpr-credentials"
    _documentation_url = DOCS_URL
    _description = (
        "Project token and GDPR OAuth token used by the GDPR flow to ask Mixpanel to delete users' data."
    )
    _code_example = """
```python
from blocks.gdpr import MixpanelGdprCredentials

gdpr = MixpanelGdprCredentials.load("BLOCK_NAME")
```
"""

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
