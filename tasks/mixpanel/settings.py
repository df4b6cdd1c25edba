"""What the Mixpanel clients need of a project: plain values the Prefect blocks hand over.

`blocks.mixpanel.MixpanelCredentials.api_settings()` and `blocks.gdpr.MixpanelGdprCredentials.settings()`
build them, so nothing under `tasks/` imports a block (or Prefect) to talk to Mixpanel. Secrets are
kept out of `repr`, so a settings object in a log or a traceback shows none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.errors import SettingsError

# deflate cannot inflate more than about 1032 times (RFC 1951's longest match per bit), so a ratio
# above 1000 never trips on a gzip answer: the guard would be off; below 10 real JSON lines trip it
MIN_INFLATION_RATIO = 10.0
MAX_INFLATION_RATIO = 1000.0


def check_inflation_ratio(value: float) -> float:
    """``value`` if it is an allowed ``max_inflation_ratio``; otherwise a ``SettingsError`` naming the range."""
    if not MIN_INFLATION_RATIO <= value <= MAX_INFLATION_RATIO:  # NaN fails too
        raise SettingsError(
            f"max_inflation_ratio must lie between {MIN_INFLATION_RATIO:g} and {MAX_INFLATION_RATIO:g}, not "
            f"{value:g} (real exports inflate 5 to 30 times; gzip cannot inflate much more than 1000 times, "
            "so a larger ratio would switch the decompression-bomb guard off)."
        )
    return value


@dataclass(frozen=True)
class Tuning:
    """How hard and how fast the pipeline may use Mixpanel's APIs, and what it refuses.

    The defaults are declared here only: the block's form (``blocks.mixpanel.MixpanelTuning``) shows
    them, with what each means and its allowed range, and hands its values back as one of these."""

    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 900.0
    max_attempts: int = 8
    retry_backoff_seconds: float = 5.0
    # Mixpanel's documented budgets per project
    export_requests_per_second: int = 3
    export_requests_per_hour: int = 60
    export_max_concurrent: int = 100
    query_requests_per_hour: int = 60
    query_max_concurrent: int = 5
    # Mixpanel refuses events above 1 MB at ingestion: 16 MiB leaves room for any line it exports
    max_line_bytes: int = 16 << 20
    max_inflation_ratio: float = 100.0

    def __post_init__(self) -> None:
        check_inflation_ratio(self.max_inflation_ratio)


@dataclass(frozen=True)
class ApiSettings:
    project_id: int
    # HTTP Basic auth: (service account username, secret), or (legacy project secret, "")
    auth: tuple[str, str] = field(repr=False)
    # a service account must name the project in every request; a legacy secret implies it
    uses_service_account: bool = True
    export_url: str = "https://data.mixpanel.com/api/2.0/export"
    query_base_url: str = "https://mixpanel.com"
    tuning: Tuning = field(default_factory=Tuning)


@dataclass(frozen=True)
class GdprSettings:
    project_token: str = field(repr=False)  # goes in the URL: the API documents no other place
    oauth_token: str = field(repr=False)  # the Bearer token of the GDPR API, valid for one year
