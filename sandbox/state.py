"""Mutable state of one running sandbox project: config, fault plan, stats and rate limiter."""

from __future__ import annotations

from sandbox.config import ProjectConfig
from sandbox.faults import FaultPlan
from sandbox.stats import RateLimiter, Stats


class SandboxState:
    def __init__(self, cfg: ProjectConfig) -> None:
        self.cfg = cfg
        self.faults = FaultPlan()
        self.stats = Stats()
        self.limiter = RateLimiter(cfg)
        # Mixpanel serves only what it has processed: None serves every event, a number only those
        # whose mp_processing_time_ms is at most that (the clock tests move forward between runs)
        self.processed_until_ms: int | None = None

    def reset(self) -> None:
        """Clear stats, pending faults, quirks and the rate-limit windows."""
        self.faults.reset()
        self.stats.reset()
        self.limiter.reset()
