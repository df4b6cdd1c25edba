"""A flow run outlives its Prefect server for a while: the destination, not the server, is the source of
truth of what a run committed.

Invariants:
* While the Prefect API is unreachable (a server restarted, upgraded, its database failing over), a run
  keeps exporting and committing. The calls it can do without (progress, the server-wide export limits,
  whose place the host's own budget of ``tasks.mixpanel.ratelimit`` takes) are skipped; the outage is
  said once when it starts and once when it ends, each in one line.
* What a run must report (its summary artifact, its final state) waits for the server, up to
  ``REPORT_WAIT_SECONDS``; a run still without a server then ends as its engine makes it end.
* A run the server marked Crashed while it could not hear from it (the heartbeat automation of
  ``flows.setup``) and that is alive is set back to Running before it reports its end: otherwise its
  final state would be refused and a run that committed every day would read as crashed. A run that
  lost its server gives the server ``SETTLE_SECONDS`` once it is back to do so before it looks.
* Prefect's own reports of the meantime arrive when the server is back: task run states and heartbeats
  are events, which Prefect's events client keeps until the server confirms them. Logs written while the
  server was away may be lost (Prefect drops a batch it could not send): the summary artifact and the
  line said at the end of the outage name what was committed meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL
from prefect.states import Running

T = TypeVar("T")

REPORT_WAIT_SECONDS = 900.0  # how long a run waits for its server to report its end
POLL_SECONDS = 2.0
PROBE_SECONDS = 3.0
# a server back from an outage marks the runs whose heartbeats it missed Crashed at its first evaluation
# of the automations (every 5 s, once its services started): a run that lost its server waits this long
# before it looks at its state, so that it finds the Crashed to undo instead of ending beside it
SETTLE_SECONDS = 30.0

log = logging.getLogger(__name__)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the Prefect API did not answer (no connection, a timeout, a proxy's or a
    starting server's 5xx), as opposed to an answer that refuses the call. Prefect wraps some (a
    concurrency slot it could not ask for), so the causes count too."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, httpx.TransportError | ConnectionError):
            return True
        if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code >= 500:
            return True
        cause = cause.__cause__
    return False


def _health() -> bool:
    """True, or raises unless the API answers its health check within PROBE_SECONDS. Prefect's own
    client retries a lost connection for about a minute, a wait a run must not make per request."""
    url = PREFECT_API_URL.value()
    if not url:  # Prefect's server inside this process: as reachable as the process itself
        return True
    key = PREFECT_API_KEY.value()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    httpx.get(f"{url}/health", headers=headers, timeout=PROBE_SECONDS).raise_for_status()
    return True


class Outage:
    """The state of this process's link to the Prefect API, shared by every thread of a run."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._cause = ""
        self.happened = False  # whether this process lost the API once: its run may have been marked Crashed
        self._lock = threading.Lock()

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def begin(self, exc: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since, self._cause, self.happened = time.monotonic(), type(exc).__name__, True
        _say(
            logging.WARNING,
            f"The Prefect server is unreachable ({type(exc).__name__}): the run goes on exporting and "
            "committing to the destination, and reports to the server when it is back.",
        )

    def end(self) -> None:
        with self._lock:
            if self._since is None:
                return
            lasted, self._since = time.monotonic() - self._since, None
        # said when the server can hear it: the line said at the start of the outage may have been lost
        _say(
            logging.WARNING,
            f"The Prefect server was unreachable for {lasted:.0f} s ({self._cause}): the run went on "
            "exporting and committing meanwhile, and reports to it again.",
        )

    def reachable(self) -> bool:
        """Whether the API answers now (a quick probe): what a call Prefect would retry for a minute
        asks first."""
        return self.optional(_health) is True

    def optional(self, call: Callable[[], T]) -> T | None:
        """``call()``, or None when the API is unreachable: for what a run can do without."""
        try:
            result = call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            self.begin(exc)
            return None
        self.end()
        return result

    def required(self, call: Callable[[], T], seconds: float = REPORT_WAIT_SECONDS) -> T:
        """``call()``, waiting up to ``seconds`` for an unreachable API to answer again."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                result = call()
            except Exception as exc:
                if not unreachable(exc) or time.monotonic() >= deadline:
                    raise
                self.begin(exc)
                time.sleep(POLL_SECONDS)
                continue
            self.end()
            return result


OUTAGE = Outage()


def report_when_back() -> None:
    """Before a flow run reports its end: wait for the server, and undo a Crashed it was given while away."""
    run_id = flow_run.id
    if not run_id:  # a flow called from Python without a server-side run
        return
    with contextlib.suppress(Exception):  # the engine's own report then says what is wrong
        state = OUTAGE.required(lambda: _read_state(run_id))
        if OUTAGE.happened:
            # a server just back acts on the heartbeats it missed within seconds: let it, then look
            time.sleep(SETTLE_SECONDS)
            state = OUTAGE.required(lambda: _read_state(run_id))
        if state is not None and state.type == StateType.CRASHED:
            _say(
                logging.WARNING,
                f"The server marked this run Crashed ({state.message}) while it could not hear from it; "
                "the run was alive and went on: its state is set back to Running before it ends.",
            )
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(UUID(run_id), Running(), force=True)


def _read_state(run_id: str) -> State | None:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state


def _say(level: int, message: str) -> None:
    try:
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = get_run_logger()
    except MissingContextError:
        logger = log
    logger.log(level, message)
