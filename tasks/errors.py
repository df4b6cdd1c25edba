"""The error tree every module raises from.

Two branches only, so flows and retry loops decide with one ``isinstance``:

* ``FatalError``: retrying cannot help (bad credentials, no plan, bad parameters, a bad record over
  the threshold). The message is one sentence: what happened and what to do.
* ``RetriableError``: the whole unit of work may succeed if tried again (429, 5xx, a dropped
  connection, a truncated body). ``retry_after`` carries the server's hint in seconds, if any.
"""

from __future__ import annotations

import re


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class FatalError(PipelineError):
    """Stop: a person has to change something before the unit can succeed."""


class RetriableError(PipelineError):
    """Try the whole unit again after a pause."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadCredentialsError(FatalError):
    pass


class PlanError(FatalError):
    pass


class PermissionDeniedError(FatalError):
    pass


class BadRequestError(FatalError):
    pass


class TimezoneSettingError(FatalError):
    pass


class MalformedRecordsError(FatalError):
    pass


class RateLimitedError(RetriableError):
    pass


class ServerError(RetriableError):
    pass


class TruncatedStreamError(RetriableError):
    pass


class ConnectionDroppedError(RetriableError):
    pass


class ConcurrentCommitError(RetriableError):
    """Another run committed the partition between this run's read of it and its own commit."""


class PreconditionFailedError(RetriableError):
    """A conditional write was refused: the object exists (create-if-absent) or changed (If-Match)."""


class CorruptManifestError(FatalError):
    """A manifest names a key outside its partition (absolute, ``..``, another folder): nothing is deleted."""


class OutsideDestinationError(FatalError):
    """A key to read, write or delete does not lie under the destination root or the table's own prefix."""


class MissingDestinationError(FatalError):
    """A local destination's folder does not exist and its block does not ask for it to be created."""


class NotJsonLinesError(RetriableError):
    """A 200 whose body is not Mixpanel's JSON lines (a proxy's HTML page, an error text)."""


class InflatedBodyError(FatalError):
    """A compressed body inflating far beyond any real export (a decompression bomb)."""


class ShrinkRefusedError(FatalError):
    """A day's new version holds markedly fewer rows than its committed one and Mixpanel does not confirm it."""


class FilterMismatchError(FatalError):
    """A run would replace a day committed with a different event filter."""


class TableIdentityError(FatalError):
    """A table found by name (a catalog, Glue, a Delta path) is located elsewhere than this destination's own."""


_SECRETS = re.compile(
    r"(?i)((?:token|secret|password|passwd|api[_-]?key|access[_-]?key|signature|sig|auth)[\"']?\s*[=:]\s*[\"']?)"
    r"[^\s\"'&,;<>]+"
    r"|((?:basic|bearer)\s+)[A-Za-z0-9+/=._~-]+"
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential (``token=…``, ``Bearer …``) replaced by ``***``."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)
