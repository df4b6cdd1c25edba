"""Configuration of one sandbox Mixpanel project."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import xxhash

TimeMode = Literal["utc", "local"]
IdentityMode = Literal["simplified", "original"]

# Bump when the generator output changes, so stale disk caches are not served.
GENERATOR_VERSION = 3


@dataclass(frozen=True)
class ProjectConfig:
    project_id: int = 1
    username: str = "sandbox-user"
    secret: str = "sandbox-secret"
    legacy_secret: str = "legacy-secret"
    # Projects created before 2023 use the project timezone for dates and a "local epoch" for `time`.
    time_mode: TimeMode = "utc"
    timezone: str = "UTC"
    events_per_day: int = 500
    seed: int = 1
    identity_mode: IdentityMode = "simplified"
    today: date | None = None
    # The day the project was created: earlier days export nothing (None: every day has events).
    created: date | None = None
    # Mixpanel's documented export limits per project; None disables a limit.
    max_per_second: int | None = 3
    max_concurrent: int | None = 100
    max_per_hour: int | None = 60
    gzip: bool = True
    cache_dir: Path | None = None
    # with cache_dir: a plain request's gzip body is compressed once per date range and served from disk
    # (as a CDN would), so a benchmark measures the client's inflating, not the sandbox's compressing
    gzip_cached: bool = False
    # Engage (user profiles): None derives one profile per identified user of the events (sandbox.people).
    profiles: int | None = None
    anonymous_profiles: int = 0  # extra `$device:` profiles of never-identified devices
    # Mixpanel's query API limits (Engage counts as a query); None disables a limit.
    query_max_per_hour: int | None = 60
    query_max_concurrent: int | None = 5
    # GDPR API: the project token goes in `?token=`, the user's GDPR OAuth token in `Authorization: Bearer`.
    project_token: str = "sandbox-project-token"
    gdpr_oauth_token: str = "sandbox-gdpr-oauth-token"
    gdpr_polls_until_done: int = 1  # status polls answering PENDING before a task reports SUCCESS
    gdpr_max_per_second: int | None = 1  # Mixpanel's documented limit; None disables it

    def __post_init__(self) -> None:
        if self.time_mode not in ("utc", "local"):
            raise ValueError(f"time_mode must be 'utc' or 'local', not {self.time_mode!r}")
        if self.identity_mode not in ("simplified", "original"):
            raise ValueError(f"identity_mode must be 'simplified' or 'original', not {self.identity_mode!r}")
        if self.events_per_day < 0:
            raise ValueError("events_per_day must be >= 0")
        if (self.profiles is not None and self.profiles < 0) or self.anonymous_profiles < 0:
            raise ValueError("profiles and anonymous_profiles must be >= 0")
        if self.gdpr_polls_until_done < 0:
            raise ValueError("gdpr_polls_until_done must be >= 0")
        ZoneInfo(self.timezone)  # fail early on an unknown zone name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone if self.time_mode == "local" else "UTC")

    def current_day(self) -> date:
        """'Today' as Mixpanel sees it: in UTC, or in the project timezone for local-time projects."""
        if self.today is not None:
            return self.today
        return datetime.now(UTC).astimezone(self.zone).date()

    def data_key(self) -> str:
        """Stable key over the fields that change generated data (names the disk cache folder)."""
        tz = self.timezone if self.time_mode == "local" else "UTC"
        parts: tuple[object, ...] = (
            GENERATOR_VERSION,
            self.time_mode,
            tz,
            self.events_per_day,
            self.seed,
            self.identity_mode,
        )
        if self.created is not None:
            parts += (self.created.isoformat(),)
        return f"v{GENERATOR_VERSION}-{xxhash.xxh3_64_hexdigest(repr(parts).encode())}"
