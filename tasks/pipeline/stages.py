"""Stages of one export running in threads, each handing its items on through a bounded queue.

The export is a chain: read and inflate the body → parse lines into frames → split, count and write
files. Inflating (zlib), the frames' column work (polars) and writing Parquet (pyarrow) release the
GIL, so the stages share the machine's cores instead of taking turns on one.

Invariants:

* items come out of a stage in the order they went in, so the chain's result is the one a single
  thread would give (rows, fingerprints, line numbers, rejects, the order of files);
* a stage's queue holds at most ``depth`` items: memory is bounded whatever the body's size;
* the first error of any stage reaches the consumer as it was raised (its one sentence unchanged),
  after the items that came before it;
* when the chain is closed (the consumer finished, failed or was cancelled) every stage thread is
  stopped, woken if it waits on a socket (``interrupt``), and joined before ``close`` returns: no
  stage outlives its unit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
# how often a stage blocked on a queue looks whether the chain was closed
POLL_SECONDS = 0.05


class _Stopped(Exception):
    """The chain was closed while a stage waited on a queue."""


class _End:
    pass


_END = _End()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Stages:
    """Threads of one chain of stages; ``with Stages() as stages:`` closes them all on the way out."""

    def __init__(self, prefix: str = "mp-export") -> None:
        self.prefix = prefix
        self._stop = threading.Event()
        self._threads: list[tuple[threading.Thread, Callable[[], None] | None]] = []

    def __enter__(self) -> Stages:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def ahead(
        self, items: Iterable[T], name: str, depth: int, interrupt: Callable[[], None] | None = None
    ) -> Iterator[T]:
        """Iterate ``items`` in a thread of its own, up to ``depth`` items ahead of the consumer.

        ``interrupt`` wakes the producer if it may block outside the chain (a socket read)."""
        channel = _Channel[T](self._stop, depth)
        thread = threading.Thread(
            target=channel.produce, args=(items,), name=f"{self.prefix}-{name}", daemon=True
        )
        self._threads.append((thread, interrupt))
        thread.start()
        return channel.consume()

    def close(self) -> None:
        """Stop every stage and wait for its thread to end."""
        self._stop.set()
        for thread, interrupt in self._threads:
            if interrupt is not None and thread.is_alive():
                interrupt()
        for thread, _ in self._threads:
            thread.join()
        self._threads.clear()


class _Channel(Generic[T]):
    def __init__(self, stop: threading.Event, depth: int) -> None:
        self._stop = stop
        self._queue: queue.Queue[T | _End | _Failed] = queue.Queue(maxsize=depth)

    def produce(self, items: Iterable[T]) -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                self._put(item)
            self._put(_END)
        except _Stopped:
            pass  # the chain was closed: nobody waits for what this stage had left
        except BaseException as exc:
            if not self._stop.is_set():  # after a close, an error is the close's echo (a shut socket)
                with suppress(_Stopped):
                    self._put(_Failed(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator's own clean-up (and the stages it reads) runs in its thread

    def consume(self) -> Iterator[T]:
        while True:
            item = self._get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def _put(self, item: T | _End | _Failed) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _get(self) -> T | _End | _Failed:
        while True:
            try:
                return self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None
