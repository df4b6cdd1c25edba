"""Parameter types of the flows: the JSON schema the deployments carry, so the server refuses a bad value
when a run is created (from the UI, the CLI or the API), not minutes later inside the run.

A date is a date picker in the UI's form and must be written YYYY-MM-DD (JSON Schema's ``format`` is
not enforced by Prefect's server, ``pattern`` is). An optional date is a date picker left empty, not a
"None" toggle: its schema is the date's, and leaving it empty means the documented default.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from pydantic import Field, WithJsonSchema

from tasks.errors import BadRequestError

DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_DATE_SCHEMA = {"type": "string", "format": "date", "pattern": DATE_PATTERN}

Day = Annotated[date, WithJsonSchema(_DATE_SCHEMA)]
OptionalDay = Annotated[date | None, WithJsonSchema(_DATE_SCHEMA)]
AtLeastOne = Annotated[int, Field(ge=1)]
AtLeastZero = Annotated[int, Field(ge=0)]
NonNegativeHours = Annotated[float, Field(ge=0)]


def check_concurrency(max_concurrent_requests: int) -> None:
    if max_concurrent_requests < 1:
        raise BadRequestError(
            f"max_concurrent_requests must be at least 1 (got {max_concurrent_requests}): it is how many export "
            "requests this run keeps in flight at once."
        )
