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
  ``flows.setup`` fires as soon as a restarted server evaluates it) and that is alive is set back to
  Running within ``POLL_SECONDS`` of seeing it: a watch thread probes the server through the outage and,
  for ``WATCH_SECONDS`` once it is back, looks at the state of every flow run of this process that has
  not reported its end. It never touches a run once that run reports its end (``report_when_back``),
  and the server refuses a Crashed over a final state, so a finished run keeps its final state.
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
from collections.abc import Callable, Mapping
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
# of the automations (every 5 s once its services started, later on a loaded machine): a run looks out for
# that Crashed this long after the server answers again
WATCH_SECONDS = 180.0

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
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._runs: dict[str, str] = {}  # id -> name of this process's flow runs that have not ended
        self._runs_lock = threading.Lock()  # a run reports its end or is revived, never both at once

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def begin(self, exc: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since, self._cause = time.monotonic(), type(exc).__name__
            if self._watcher is None and self._runs:  # a process without flow runs has none to revive
                self._watcher = threading.Thread(target=self._watch, name="prefect-outage-watch", daemon=True)
                self._watcher.start()
        _say(
            logging.WARNING,
            f"The Prefect server is unreachable ({type(exc).__name__}): the run goes on exporting and "
            "committing to the destination, and reports to the server when it is back.",
            self._runs.copy(),
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
            self._runs.copy(),
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

    def track(self, run_id: str, name: str) -> None:
        """``run_id`` runs in this process: revive it if the server marks it Crashed after an outage."""
        with self._runs_lock:
            self._runs[run_id] = name

    def finish(self, run_id: str) -> None:
        """``run_id`` reports its end now: from here on, its state is the engine's to set."""
        with self._runs_lock:
            self._runs.pop(run_id, None)

    def _watch(self) -> None:
        """Through an outage, probe the server; once it is back, look out for a Crashed it gives a live
        run, for WATCH_SECONDS; a new outage meanwhile starts the wait again."""
        back_at: float | None = None
        while True:
            time.sleep(POLL_SECONDS)
            if self.ongoing:
                back_at = None
                self.reachable()  # ends the outage, and says so, once the server answers
                continue
            back_at = back_at or time.monotonic()
            if not self.reachable():  # gone again: Prefect's client would retry each call for a minute
                continue
            for run_id in list(self._runs):
                self._revive(run_id)
            with self._lock:
                if self._since is None and time.monotonic() - back_at >= WATCH_SECONDS:
                    self._watcher = None
                    return

    def _revive(self, run_id: str) -> None:
        with self._runs_lock:
            if run_id in self._runs:
                self.optional(lambda: revive_if_crashed(run_id, self._runs))


OUTAGE = Outage()


def track_this_run() -> None:
    """Called as a flow run starts: the outage watch looks after it until it reports its end."""
    if run_id := flow_run.id:
        OUTAGE.track(run_id, flow_run.name or run_id)


def report_when_back() -> None:
    """Before a flow run reports its end: wait for the server, and undo a Crashed it was given while away."""
    run_id = flow_run.id
    if not run_id:  # a flow called from Python without a server-side run
        return
    OUTAGE.finish(run_id)
    with contextlib.suppress(Exception):  # the engine's own report then says what is wrong
        OUTAGE.required(lambda: revive_if_crashed(run_id))


def revive_if_crashed(run_id: str, names: Mapping[str, str] | None = None) -> bool:
    """Set ``run_id``, alive in this process, back to Running if the server marked it Crashed."""
    state = _read_state(run_id)
    if state is None or state.type != StateType.CRASHED:
        return False
    _say(
        logging.WARNING,
        f"The server marked this run Crashed ({state.message}) while it could not hear from it; the run "
        "is alive and goes on: its state is set back to Running.",
        {run_id: (names or {}).get(run_id, run_id)},
    )
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Running(), force=True)
    return True


def _read_state(run_id: str) -> State | None:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state


def _say(level: int, message: str, runs: Mapping[str, str] | None = None) -> None:
    """Into the log of the flow run of this thread's context or, from a thread without one (the
    outage watch, an export stage), into the logs of ``runs`` (id -> name): Prefect's API handler sends
    a record to the run its ``flow_run_id`` names."""
    try:
        get_run_logger().log(level, message)
        return
    except MissingContextError:
        pass
    for run_id, name in (runs or {}).items():
        extra = {"flow_run_id": UUID(run_id), "flow_run_name": name}
        logging.getLogger("prefect.flow_runs").log(level, message, extra=extra)
    if not runs:
        log.log(level, message)
