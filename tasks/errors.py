"""The error tree every module raises from.

Two branches only, so flows and retry loops decide with one ``isinstance``:

* ``FatalError``: retrying cannot help (bad credentials, no plan, bad parameters, a bad record over
  the threshold). The message is one sentence: what happened and what to do.
* ``RetriableError``: the whole unit of work may succeed if tried again (429, 5xx, a dropped
  connection, a truncated body). ``retry_after`` carries the server's hint in seconds, if any.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus


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


class MissingObjectError(FatalError):
    """An object to read is not in the store."""


class MissingCommittedFileError(MissingObjectError):
    """A file a manifest names is not in the store: removed by hand, or by a newer commit meanwhile."""


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


class UnrequestedEncodingError(FatalError):
    """A 200 in a ``Content-Encoding`` the client did not ask for (it asks for gzip only)."""


class NothingCommittedError(FatalError):
    """A destination holds no committed day of the events table: it has no sync status to show."""


class SettingsError(FatalError, ValueError):
    """A setting outside its allowed range (a ``ValueError`` too, so a pydantic block reports it)."""


# a space as it appears in text, HTML and URLs: the scheme and the value may be parted by any of them
_SP = r"(?:\s|&nbsp;|&#160;|&#xa0;|%20|\+)"
# a quote as text, HTML or an escaped string shows it
_Q = r"(?:[\"'`]|&quot;|&#34;|&#39;|&#x27;|&apos;|\\[\"'])"
_KEYS = (
    r"(?:proxy-authorization|authorization|auth|access[_-]?token|token|client[_-]?secret|secret|password"
    r"|passwd|pwd|api[_-]?key|apikey|access[_-]?key|signature|sig)"
)
_SECRETS = re.compile(
    # `key: value`, `key=value`, `"key": "value"` (HTML-escaped too); a scheme word before the value
    # (`Authorization: Basic xxx`) is kept and the credential after it masked, not the scheme word
    rf"(?i)({_KEYS}{_Q}?\s*(?:=|:|&#61;|&#58;|%3d|%3a){_SP}*{_Q}?(?:(?:basic|bearer|digest){_SP}+)?)"
    r"[^\s\"'`&,;<>\\]+"
    # a scheme credential wherever it stands (a header echoed as a tuple, a log line)
    rf"|\b((?:basic|bearer|digest){_SP}+)[A-Za-z0-9+/=._~%-]+"
    # the userinfo of a URL: https://user:secret@host
    r"|\b([a-z][a-z0-9+.-]*://)[^/\s@<>\"']+@"
)
# a known secret shorter than this is not searched for as text: it would mask ordinary words
MIN_KNOWN_SECRET = 6


def secret_forms(secrets: Iterable[str], basic: tuple[str, str] | None = None) -> tuple[str, ...]:
    """How ``secrets`` (and a Basic ``user:password`` pair) may appear in a body that echoes a
    request: raw, URL-encoded, HTML- and JSON-escaped, and the base64 of the Basic pair; longest first."""
    forms: set[str] = set()
    for secret in secrets:
        if len(secret) >= MIN_KNOWN_SECRET:
            escaped = json.dumps(secret)[1:-1]
            forms |= {secret, quote(secret, safe=""), quote_plus(secret), html.escape(secret), escaped}
    if basic is not None:
        forms.add(base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode())
    return tuple(sorted(forms, key=len, reverse=True))


def redact(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every credential masked as ``***``: the forms of the secrets the caller knows
    (``secret_forms``) wherever they appear, then anything that looks like one (``token=…``,
    ``Authorization: Basic …``, ``Bearer …``, ``https://user:secret@host``), case-insensitive."""
    return _SECRETS.sub(_mask, mask_known(text, known))


def mask_known(text: str, known: Iterable[str]) -> str:
    """``text`` with each of ``known`` (``secret_forms``) replaced by ``***``, and nothing else."""
    for form in known:
        text = text.replace(form, "***")
    return text


def _mask(match: re.Match[str]) -> str:
    if match.group(3):
        return f"{match.group(3)}***@"
    return f"{match.group(1) or match.group(2)}***"
