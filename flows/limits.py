"""Mixpanel's export rate limits as Prefect global concurrency limits, held across every worker.

Each host already keeps Mixpanel's budget in a shared SQLite file (tasks/ratelimit.py); these limits,
kept by the Prefect server, hold it across hosts when a backfill fans out over many workers.
Prefect's rate limits are token buckets (a burst of ``limit``, refilled at ``slot_decay_per_second``):
at most ``limit + decay * T`` requests in any window of T seconds, so each bucket gets half of
Mixpanel's window, which keeps every window within Mixpanel's numbers (60/hour, 3/second).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound


@dataclass(frozen=True)
class Limit:
    name: str
    limit: int
    slot_decay_per_second: float = 0.0


PER_HOUR = Limit("mixpanel-export-per-hour", 30, 30 / 3600)  # ≤ 60 in any hour
PER_SECOND = Limit("mixpanel-export-per-second", 1, 2.0)  # ≤ 3 in any second
IN_FLIGHT = Limit("mixpanel-export-in-flight", 100)  # Mixpanel's concurrent-query cap
LIMITS = (PER_HOUR, PER_SECOND, IN_FLIGHT)


@contextmanager
def export_slot() -> Iterator[None]:
    """Hold one export request's place in the server-wide limits (no-op where they do not exist)."""
    # one at a time: asked together, a refusal of the per-second limit makes the client wait as long
    # as a slot of the per-hour one takes to free (minutes), not the half second it needs
    rate_limit(PER_HOUR.name)
    rate_limit(PER_SECOND.name)
    with concurrency(IN_FLIGHT.name, occupy=1):
        yield


def ensure_limits() -> list[str]:
    """Create or update the limits on the current Prefect server; returns their names."""
    with get_client(sync_client=True) as client:
        for item in LIMITS:
            try:
                client.read_global_concurrency_limit_by_name(item.name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=item.name, limit=item.limit, slot_decay_per_second=item.slot_decay_per_second
                    )
                )
            else:
                client.update_global_concurrency_limit(
                    item.name,
                    GlobalConcurrencyLimitUpdate(
                        limit=item.limit, slot_decay_per_second=item.slot_decay_per_second, active=True
                    ),
                )
    return [item.name for item in LIMITS]
