"""What every flow run sets up first: errors logged once without tracebacks, and an exit when orphaned.

* Prefect logs a task's exception where it is raised, again when the task ends, again when the flow
  catches it and once more when the flow ends: one bad secret became a screen of tracebacks. Errors of the
  project's tree (``tasks.errors.PipelineError``) already say what happened and what to do in one
  sentence, so their tracebacks are dropped and each sentence is logged once per flow run. Anything else
  (a bug) keeps its traceback.
* A process worker starts each flow run as its child. If the worker is killed, the run would go on
  alone, holding its export slots, while nobody watches it; it now notices that its parent is gone and
  stops as a crash (SIGTERM, which Prefect's engine turns into a Crashed state), so a rerun can take over.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import signal
import threading
import time
import typing
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.outage import OUTAGE, report_when_back, track_this_run
from tasks.errors import PipelineError

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
ORPHAN_CHECK_SECONDS = 5.0
ORPHAN_GRACE_SECONDS = 60.0  # after SIGTERM, how long the engine may take to report the crash
_SEEN_LIMIT = 1000  # flow runs remembered per process (a worker-run process has one)

T = TypeVar("T")
P = ParamSpec("P")
RunLogger = logging.Logger | logging.LoggerAdapter[logging.Logger]  # what get_run_logger returns


class OneSentencePerRun(logging.Filter):
    """Drops tracebacks of the project's own errors and every repeat of their sentence in a flow run."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        run = str(getattr(record, "flow_run_id", "") or "")
        exc = record.exc_info[1] if record.exc_info else None
        with self._lock:
            seen = self._seen.setdefault(run, set())
            if len(self._seen) > _SEEN_LIMIT:
                self._seen.pop(next(iter(self._seen)))
            if isinstance(exc, PipelineError):
                sentence = str(exc)
                if sentence in seen:
                    return False
                seen.add(sentence)
                record.msg, record.args = "%s: %s", (type(exc).__name__, sentence)
                record.exc_info, record.exc_text = None, None
                return True
            message = record.getMessage()
            return not any(sentence in message for sentence in seen)


_FILTER = OneSentencePerRun()


def pipeline_flow(**options: Any) -> Callable[[Callable[P, T]], Flow[P, T]]:
    """Prefect's ``@flow`` with what every flow of the project does first and last: ``prepare_run``
    before its body and, once the body returned or raised, ``report_when_back`` (a run that outlived an
    unreachable server waits for it to report its end). A signal (a cancellation, a crash) skips it."""

    def decorate(body: Callable[P, T]) -> Flow[P, T]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            prepare_run()
            try:
                result = body(*args, **kwargs)
            except Exception:
                report_when_back()
                raise
            report_when_back()
            return result

        # Prefect resolves the parameters' annotations in the namespace of the function it is given: the
        # flow module's own types (blocks, parameter aliases) are resolved here, where they are known
        run.__annotations__ = typing.get_type_hints(body, include_extras=True)
        run.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]  # read by inspect.signature
        return cast(Flow[P, T], flow(**options)(run))

    return decorate


def prepare_run() -> None:
    """Call first in every flow: installs the log filter once per process, and the orphan watch; the
    outage watch looks after the run until it reports its end."""
    track_this_run()
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    if os.environ.get("PREFECT__FLOW_RUN_ID"):  # started by a worker, not from Python or a test
        watch_parent(os.getppid(), get_run_logger())


def watch_parent(parent: int, logger: RunLogger) -> threading.Thread:
    """Stop this process as crashed once ``parent`` (the worker) is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_SECONDS)
        try:
            with contextlib.suppress(Exception):  # a log that cannot be written must not keep the run alive
                logger.error(
                    "The worker that started this flow run is gone (process %d): stopping the run as crashed; "
                    "run it again to finish its days.",
                    parent,
                )
            os.kill(os.getpid(), signal.SIGTERM)  # Prefect's engine reports the run Crashed
            time.sleep(ORPHAN_GRACE_SECONDS)
        finally:
            # the engine's shutdown may stop this thread (SystemExit) while request threads still hang
            # on a dead connection and keep the process alive: once orphaned, it ends here regardless
            os._exit(1)

    thread = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    thread.start()
    return thread


def synchronous(result: T | Coroutine[Any, Any, T]) -> T:
    """The value of a Prefect call typed value-or-coroutine (``async_dispatch``: ``run_deployment``,
    ``create_progress_artifact``): Prefect picks by the run context, so in a synchronous flow, the value."""
    if isinstance(result, Coroutine):
        result.close()
        raise TypeError("a Prefect call made inside an event loop returned a coroutine, not its value")
    return result


class Progress:
    """A run's progress artifact: the share of days committed, and the last wait on the rate budget.
    It shows what the server could be told: updates the server misses are skipped, the next one
    (or the first, if its creation was missed) brings the artifact up to date."""

    def __init__(self, total_days: int, logger: RunLogger) -> None:
        self.total = max(total_days, 1)
        self.done = 0
        self.last_wait = ""
        self.logger = logger
        self.id: UUID | None = None
        self._show()

    def add(self, days: int) -> None:
        self.done += days
        self._show()

    def note(self, message: str) -> None:
        """Every warning of the run's client goes to its log; a wait also shows in the artifact."""
        self.logger.warning(message)
        if message.startswith("waiting"):
            self.last_wait = message
            self._show()

    def _show(self) -> None:
        if self.id is None:
            self.id = OUTAGE.optional(
                lambda: synchronous(create_progress_artifact(self.percent(), description=self.describe()))
            )
        else:
            progress_id = self.id
            OUTAGE.optional(
                lambda: update_progress_artifact(progress_id, self.percent(), description=self.describe())
            )

    def percent(self) -> float:
        return 100.0 * self.done / self.total

    def describe(self) -> str:
        text = f"Days committed: {self.done} of {self.total}"
        return f"{text}; last wait: {self.last_wait}" if self.last_wait else text
