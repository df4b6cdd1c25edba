"""Mutable state of one running sandbox project: config, fault plan, stats, rate limiter, data changes and
GDPR deletion tasks."""

from __future__ import annotations

from sandbox.changes import Changes
from sandbox.config import ProjectConfig
from sandbox.faults import FaultPlan
from sandbox.gdpr_tasks import GdprTasks
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
        # Late events and completed deletions: project data, so reset() keeps them (clear_changes() drops them).
        self.changes = Changes()
        self.gdpr = GdprTasks(cfg.gdpr_max_per_second, cfg.gdpr_polls_until_done)

    def reset(self) -> None:
        """Clear stats, pending faults, quirks and the rate-limit windows (GDPR's and its fail_next too)."""
        self.faults.reset()
        self.stats.reset()
        self.limiter.reset()
        self.gdpr.reset()

    def clear_changes(self) -> None:
        """Drop late events, deletions and the GDPR tasks (a pending task would delete again when polled)."""
        self.changes.clear()
        self.gdpr.clear_tasks()
