"""The Prefect block that holds how to reach one Mixpanel project."""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator, model_validator

from tasks.mixpanel.calendar import ProjectCalendar, TimeMode, check_timezone
from tasks.mixpanel.settings import ApiSettings, Tuning, check_inflation_ratio

# an HttpUrl, as Prefect's own blocks give it: `Block._documentation_url` is typed so
DOCS_URL = HttpUrl("https://github.com/mixpanel-pipelines/mixpanel-pipelines#blocks")

# Mixpanel pins every project to one data centre; the export API lives on a separate host.
EXPORT_HOSTS = {
    "US": "https://data.mixpanel.com",
    "EU": "https://data-eu.mixpanel.com",
    "IN": "https://data-in.mixpanel.com",
}
QUERY_HOSTS = {
    "US": "https://mixpanel.com",
    "EU": "https://eu.mixpanel.com",
    "IN": "https://in.mixpanel.com",
}


# the defaults are the plain settings' (tasks/mixpanel/settings.py): this form describes and bounds them
DEFAULT = Tuning()


class MixpanelTuning(BaseModel):
    """How hard and how fast the pipeline may use Mixpanel's APIs, and what it refuses."""

    model_config = ConfigDict(extra="forbid")

    connect_timeout_seconds: float = Field(
        default=DEFAULT.connect_timeout_seconds,
        gt=0,
        description="Seconds to wait for a TCP/TLS connection to Mixpanel.",
    )
    read_timeout_seconds: float = Field(
        default=DEFAULT.read_timeout_seconds,
        gt=0,
        description="Seconds to wait for the next bytes of a response; large exports take minutes "
        "before the first byte.",
    )
    max_attempts: int = Field(
        default=DEFAULT.max_attempts,
        ge=1,
        le=50,
        description="Attempts per unit of work before the unit fails.",
    )
    retry_backoff_seconds: float = Field(
        default=DEFAULT.retry_backoff_seconds,
        ge=0,
        description="First pause between attempts when Mixpanel names no wait; it doubles each attempt "
        "(with jitter), capped at 5 minutes. A 429 or 5xx with Retry-After waits what it says (plus a "
        "little jitter).",
    )
    export_requests_per_second: int = Field(
        default=DEFAULT.export_requests_per_second,
        ge=1,
        description="Export API budget per second for this project (Mixpanel: 3).",
    )
    export_requests_per_hour: int = Field(
        default=DEFAULT.export_requests_per_hour,
        ge=1,
        description="Export API budget per hour for this project (Mixpanel: 60).",
    )
    export_max_concurrent: int = Field(
        default=DEFAULT.export_max_concurrent,
        ge=1,
        description="Export requests in flight at once for this project (Mixpanel: 100).",
    )

    query_requests_per_hour: int = Field(
        default=DEFAULT.query_requests_per_hour,
        ge=1,
        description="Query API (Engage) budget per hour for this project (Mixpanel: 60).",
    )
    query_max_concurrent: int = Field(
        default=DEFAULT.query_max_concurrent,
        ge=1,
        description="Query API (Engage) requests in flight at once (Mixpanel: 5).",
    )
    max_line_bytes: int = Field(
        default=DEFAULT.max_line_bytes,
        ge=1 << 20,
        description="Longest export line accepted, in bytes (Mixpanel refuses events above "
        "1 MB at ingestion). A longer line is a rejected line, counted against max_rejected_lines.",
    )
    max_inflation_ratio: float = Field(
        default=DEFAULT.max_inflation_ratio,
        description="Largest ratio of decompressed to received bytes of a gzipped answer, checked once "
        "64 MiB have been decompressed; beyond it the answer is treated as a decompression bomb "
        "(a fatal error, not retried). Mixpanel's JSON lines compress about 5 to 15 times; allowed "
        "10 to 1000 (gzip cannot inflate much more than 1000 times, so more would switch the guard off).",
    )

    _inflation_ratio_in_range = field_validator("max_inflation_ratio")(check_inflation_ratio)

    def plain(self) -> Tuning:
        """These values as the plain settings the pipeline takes."""
        return Tuning(**self.model_dump())


class MixpanelCredentials(Block):
    """Credentials and settings of one Mixpanel project: service account (or legacy project secret),
    data residency, the project's time mode and the API budget the pipeline may use."""

    _block_type_name = "Mixpanel Credentials"
    _documentation_url = DOCS_URL
    _description = (
        "Service-account credentials, data residency and time settings of one Mixpanel project, "
        "used by the events, people and identity flows."
    )

    project_id: int = Field(
        default=...,
        gt=0,
        description="Numeric Mixpanel project id (Project Settings > Overview).",
    )
    service_account_username: str | None = Field(
        default=None,
        description="Service account username (Organization Settings > Service Accounts); leave empty "
        "to use a legacy project secret.",
    )
    service_account_secret: SecretStr | None = Field(
        default=None,
        description="Service account secret, stored encrypted by Prefect.",
    )
    project_secret: SecretStr | None = Field(
        default=None,
        description="Legacy project API secret, used only when no service account is set "
        "(Mixpanel retires project secrets on 2027-03-03).",
    )
    residency: Literal["US", "EU", "IN"] = Field(
        default="US",
        description="Data residency of the project: US, EU or IN. It selects the API hosts.",
    )
    api_base_url: str | None = Field(
        default=None,
        description="Override of every API host (a proxy or the local sandbox), e.g. http://127.0.0.1:8765.",
    )
    time_mode: TimeMode = Field(
        default=TimeMode.UTC,
        description="utc for projects created since 2023; local for older projects whose export "
        "answers in the project timezone (local epoch).",
    )
    project_timezone: str = Field(
        default="UTC",
        description="IANA timezone of the project (Project Settings), e.g. America/Los_Angeles; "
        "used when time_mode is local.",
    )
    identity_mode: Literal["simplified", "original", "legacy"] = Field(
        default="simplified",
        description="The project's ID management: simplified (Simplified ID Merge, the default for new "
        "projects), original (Original ID Merge) or legacy (aliases only).",
    )
    tuning: MixpanelTuning = Field(
        default_factory=MixpanelTuning,
        description="Timeouts, retries, API budgets and safety limits; the defaults suit most projects.",
    )

    @model_validator(mode="before")
    @classmethod
    def _tuning_from_flat_fields(cls, data: Any) -> Any:
        """Blocks saved before the tuning section existed (and callers passing tuning values as
        plain keywords) keep working: top-level tuning keys move into ``tuning``."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in MixpanelTuning.model_fields if k in data}
        if not flat:
            return data
        nested = data.get("tuning")
        current = nested.model_dump() if isinstance(nested, MixpanelTuning) else dict(nested or {})
        rest = {k: v for k, v in data.items() if k not in flat}
        return rest | {"tuning": flat | current}

    _known_timezone = field_validator("project_timezone")(check_timezone)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> MixpanelCredentials:
        has_account = bool(self.service_account_username) and self.service_account_secret is not None
        if not has_account and self.project_secret is None:
            raise ValueError(
                "set service_account_username and service_account_secret (or a legacy project_secret)"
            )
        return self

    @property
    def uses_service_account(self) -> bool:
        return bool(self.service_account_username) and self.service_account_secret is not None

    def basic_auth(self) -> tuple[str, str]:
        """The (username, password) pair for HTTP Basic auth."""
        if self.uses_service_account:
            assert self.service_account_secret is not None
            return (str(self.service_account_username), self.service_account_secret.get_secret_value())
        assert self.project_secret is not None
        return (self.project_secret.get_secret_value(), "")

    def export_url(self) -> str:
        base = (self.api_base_url or EXPORT_HOSTS[self.residency]).rstrip("/")
        return f"{base}/api/2.0/export"

    def query_base_url(self) -> str:
        return (self.api_base_url or QUERY_HOSTS[self.residency]).rstrip("/")

    def api_settings(self) -> ApiSettings:
        """What the Mixpanel client needs, as plain values."""
        return ApiSettings(
            project_id=self.project_id,
            auth=self.basic_auth(),
            uses_service_account=self.uses_service_account,
            export_url=self.export_url(),
            query_base_url=self.query_base_url(),
            tuning=self.tuning.plain(),
        )

    def calendar(self) -> ProjectCalendar:
        """The project's days, today, and whether Mixpanel's counts compare (tasks/mixpanel/calendar.py)."""
        return ProjectCalendar(self.time_mode, self.project_timezone)
