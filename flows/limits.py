"""Mixpanel's export rate limits as Prefect global concurrency limits, held across every worker.

Each host already keeps Mixpanel's budget in a shared SQLite file (tasks/mixpanel/ratelimit.py); these limits,
kept by the Prefect server, hold it across hosts when a backfill fans out over many workers.
Prefect's rate limits are token buckets (a burst of ``limit``, refilled at ``slot_decay_per_second``):
at most ``limit + decay * T`` requests in any window of T seconds, so each bucket gets half of
Mixpanel's window, which keeps every window within Mixpanel's numbers (60/hour, 3/second).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cache
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.exceptions import MissingContextError, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from flows.outage import OUTAGE


@dataclass(frozen=True)
class Limit:
    name: str
    limit: int
    slot_decay_per_second: float = 0.0
    what: str = ""

    def expected_wait(self) -> str:
        """How long a full limit keeps a request waiting at most, for the log line that says so."""
        if self.slot_decay_per_second:
            return f"~{1 / self.slot_decay_per_second:.0f} s"
        return "until a request in flight ends"


PER_HOUR = Limit("mixpanel-export-per-hour", 30, 30 / 3600, "the hourly export budget (60/hour)")
PER_SECOND = Limit("mixpanel-export-per-second", 1, 2.0, "the per-second export budget (3/s)")
# the in-flight slots also decay, one a minute: a restarted Prefect server forgets its leases (it keeps
# them in memory), and the slots they held would otherwise stay taken for ever
IN_FLIGHT = Limit("mixpanel-export-in-flight", 100, 1 / 60, "a free place among 100 exports in flight")
# an in-flight slot is leased: renewed while its request runs, it frees itself this long after its holder
# died (a killed worker, a server that could not hear the release) instead of staying taken for ever
LEASE_SECONDS = 120.0
LIMITS = (PER_HOUR, PER_SECOND, IN_FLIGHT)
# a slot not granted within this is a wait worth a log line (an API round trip alone can take seconds)
ASK_SECONDS = 5.0

log = logging.getLogger(__name__)


@contextmanager
def export_slot(notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold one export request's place in the server-wide limits; every wait is reported to ``notify``
    (default: the run's log). While the Prefect server is unreachable the host's own budget alone holds
    (``flows.outage``): the run goes on."""
    say = notify or _run_log().warning
    limited = OUTAGE.reachable() and OUTAGE.optional(lambda: limits_exist(PREFECT_API_URL.value()))
    held = _take_slots(say) if limited else None
    try:
        yield
    finally:
        if held is not None:
            slot, pending = held
            if OUTAGE.optional(lambda: slot.__exit__(None, None, None)) is None and OUTAGE.ongoing:
                # a release the server cannot hear is no leak: the slot's lease ends LEASE_SECONDS later.
                # Prefect would release it again when the task ends, and log that failure with a traceback.
                _forget_unreleased(pending)


def _take_slots(say: Callable[[str], None]) -> tuple[AbstractContextManager[None], set[UUID]] | None:
    """Wait for the per-hour and per-second limits, then take an in-flight slot: the slot and the leases
    Prefect meant to release before, or None once the server stops answering. Each limit is asked only
    while the server answers (a quick probe): a call it no longer answers stalls for the minute Prefect's
    client retries, once, not once per limit. One at a time: asked together, a refusal of the
    per-second limit makes the client wait as long as a slot of the per-hour one takes to free
    (minutes), not the half second it needs."""
    for item in (PER_HOUR, PER_SECOND):
        if not OUTAGE.reachable():
            return None
        with _reported(item, say):
            OUTAGE.optional(functools.partial(rate_limit, item.name))
    if not OUTAGE.reachable():
        return None
    slot = concurrency(IN_FLIGHT.name, occupy=1, lease_duration=LEASE_SECONDS)
    pending = _unreleased()
    with _reported(IN_FLIGHT, say):
        taken = OUTAGE.optional(lambda: _taken(slot)) is True
    return (slot, pending) if taken else None


def _unreleased() -> set[UUID]:
    """The leases Prefect still means to release when the current task ends."""
    context = ConcurrencyContext.get()
    return set(context.cleanup_lease_ids) if context else set()


def _forget_unreleased(keep: set[UUID]) -> None:
    context = ConcurrencyContext.get()
    if context:
        context.cleanup_lease_ids[:] = [lease for lease in context.cleanup_lease_ids if lease in keep]


def _taken(slot: AbstractContextManager[None]) -> bool:
    slot.__enter__()
    return True


@contextmanager
def _reported(item: Limit, say: Callable[[str], None]) -> Iterator[None]:
    """Says once that the block inside waits for ``item`` if it has not returned within ASK_SECONDS.

    A timer rather than a timeout on the acquisition: Prefect logs every timed-out acquisition as an
    error, which would put a false alarm in the run's log beside the wait."""
    timer = threading.Timer(ASK_SECONDS, say, args=(_waiting(item),))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _waiting(item: Limit) -> str:
    return (
        f"waiting {item.expected_wait()} for {item.what}: Prefect global concurrency limit "
        f"'{item.name}' is full (shared by every worker of this server)"
    )


def _run_log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return log


@cache
def limits_exist(api_url: str | None) -> bool:
    """Whether `make deploy` created the limits on the server at ``api_url``; said once when not."""
    try:
        with get_client(sync_client=True) as client:
            for item in LIMITS:
                client.read_global_concurrency_limit_by_name(item.name)
    except ObjectNotFound:
        _run_log().warning(
            "The Prefect global concurrency limits of the export budget do not exist on this server "
            "(`make deploy` creates them): only this host's budget holds Mixpanel's rate limits."
        )
        return False
    return True


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
