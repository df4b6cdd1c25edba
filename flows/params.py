"""Parameter types of the flows: the JSON schema the deployments carry, so the server refuses a bad value
when a run is created (from the UI, the CLI or the API), not minutes later inside the run.

A date is a date picker in the UI's form and must be written YYYY-MM-DD (JSON Schema's ``format`` is
not enforced by Prefect's server, ``pattern`` is). An optional date is a date picker left empty, not a
"None" toggle: Prefect's V2 UI renders ``anyOf: [date, null]`` and ``type: [string, null]`` as a
toggle set to None, and a date schema with ``"default": null`` (what Prefect derives from ``= None``)
as a picker whose empty value it sends as null, which the server then refuses (None is not of type
'string'). So the deployed schema of an optional date is the date's with no ``default``
(``optional_dates_without_default``, applied by ``make deploy``): the UI leaves an empty picker out of
the run's parameters (the flow's default applies), and the server, which gives an optional property
without a default a null branch before it validates, accepts an explicit null from the CLI or the API
too. Leaving it empty means the documented default.

The server reports a malformed date as the regular expression it failed; the flow itself, and
``python -m flows.run``, say it as a sentence with the expected form (``malformed_date``).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

from tasks.errors import BadRequestError

DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_DATE_SCHEMA = {"type": "string", "format": "date", "pattern": DATE_PATTERN}


def malformed_date(name: str, value: object) -> str:
    return f"{name} must be a day written YYYY-MM-DD, e.g. 2026-11-01 (got {value!r})."


def _as_day(value: Any) -> Any:
    """A day from a date or a YYYY-MM-DD text; anything else is refused with the expected form."""
    if value is None or isinstance(value, date):
        return value.date() if isinstance(value, datetime) else value
    if isinstance(value, str) and re.fullmatch(DATE_PATTERN, value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    # pydantic adds the field's name in front of this: "from_date\n  Value error, a day must be ..."
    raise ValueError(malformed_date("a day", value))


Day = Annotated[date, BeforeValidator(_as_day), WithJsonSchema(_DATE_SCHEMA)]
OptionalDay = Annotated[date | None, BeforeValidator(_as_day), WithJsonSchema(_DATE_SCHEMA)]


def optional_dates_without_default(schema: dict[str, Any]) -> dict[str, Any]:
    """The deployment's parameter schema with ``"default": null`` dropped from its optional dates.

    Prefect builds the schema from the flow's signature with no hook to leave a default out (a field's
    ``json_schema_extra`` callable is ignored beside Prefect's own), so it is rewritten once deployed.
    """
    required = set(schema.get("required", []))
    properties = {
        name: {key: value for key, value in prop.items() if key != "default"}
        if name not in required and prop.get("pattern") == DATE_PATTERN and prop.get("default", 0) is None
        else prop
        for name, prop in schema.get("properties", {}).items()
    }
    return schema | {"properties": properties}


AtLeastOne = Annotated[int, Field(ge=1)]
AtLeastZero = Annotated[int, Field(ge=0)]
NonNegativeHours = Annotated[float, Field(ge=0)]


def check_concurrency(max_concurrent_requests: int) -> None:
    if max_concurrent_requests < 1:
        raise BadRequestError(
            f"max_concurrent_requests must be at least 1 (got {max_concurrent_requests}): it is how many export "
            "requests this run keeps in flight at once."
        )
