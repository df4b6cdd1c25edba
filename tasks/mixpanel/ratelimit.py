"""A rate budget shared by every thread and process on this host that talks to one Mixpanel project.

Mixpanel counts export requests per project (3/second, 60/hour, 100 in flight), not per client, so
the budget must hold across concurrent tasks and across flow runs. It lives in a small SQLite file
(``MP_PIPELINES_STATE_DIR``, default ``~/.cache/mixpanel-pipelines``): every acquisition is one
``BEGIN IMMEDIATE`` transaction, which serialises processes without a server.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path.home() / ".cache" / "mixpanel-pipelines"
# Mixpanel counts a request when it arrives, we when we take its slot, before the connection (TCP,
# TLS) is even opened. The time between the two varies by hundreds of milliseconds on a busy worker or
# a slow network: if the first request of a window arrives late and the fourth early, Mixpanel sees
# four in one second and answers 429. Half a second of slack on every window absorbs that variation;
# it costs nothing in practice, because the hourly window binds long before the per-second one does.
WINDOW_SLACK_SECONDS = 0.5
# A holder on another host cannot be checked for liveness; its slot is freed after this long.
FOREIGN_LEASE_SECONDS = 6 * 3600.0
# how long a statement waits for another process's lock on the budget file
BUSY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Window:
    """At most ``limit`` request starts in any ``seconds``-long sliding window."""

    limit: int
    seconds: float


def state_dir() -> Path:
    return Path(os.environ.get("MP_PIPELINES_STATE_DIR", DEFAULT_STATE_DIR))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RateBudget:
    """Sliding-window request budget plus a cap on requests in flight, for one key (a project)."""

    def __init__(
        self,
        key: str,
        windows: list[Window],
        max_concurrent: int,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.key = key
        self.windows = sorted(windows, key=lambda w: w.seconds)
        self.max_concurrent = max_concurrent
        self.path = path or state_dir() / "rate-budget.sqlite3"
        self._clock = clock
        self._sleep = sleep
        self._host = socket.gethostname()
        self.waited_seconds = 0.0
        self._init_db()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        # before any other statement: every lock this connection waits for waits up to the timeout
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        return conn

    def _init_db(self) -> None:
        """Create the tables (one transaction) and switch the file to WAL once.

        Several processes may open a new file at the same instant: the tables are created inside
        ``BEGIN IMMEDIATE`` (waits on the busy timeout), and the switch to WAL, which SQLite refuses
        with "database is locked" without waiting while another connection reads, is retried until
        it succeeds or another process made it. WAL is a property of the file, so later connections
        need no pragma at all."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            _retry_locked(lambda: _create_tables(conn))
            _retry_locked(lambda: _enable_wal(conn))
        finally:
            conn.close()

    @contextmanager
    def slot(self, on_wait: Callable[[float, str], None] | None = None) -> Iterator[None]:
        """Hold one request slot: blocks until every window and the concurrency cap allow a start."""
        token = uuid.uuid4().hex
        while True:
            wait, reason = self._try_acquire(token)
            if wait <= 0:
                break
            if on_wait is not None:
                on_wait(wait, reason)
            self.waited_seconds += wait
            self._sleep(wait)
        try:
            yield
        finally:
            with closing(self._connect()) as conn:
                conn.execute("DELETE FROM inflight WHERE token = ?", (token,))

    def _try_acquire(self, token: str) -> tuple[float, str]:
        conn = self._connect()
        try:
            _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE") and None)
            now = self._clock()
            horizon = now - self.windows[-1].seconds - WINDOW_SLACK_SECONDS if self.windows else now
            conn.execute("DELETE FROM starts WHERE key = ? AND ts <= ?", (self.key, horizon))
            self._free_dead_holders(conn, now)
            wait, reason = self._wait_needed(conn, now)
            if wait <= 0:
                conn.execute("INSERT INTO starts VALUES (?, ?)", (self.key, now))
                conn.execute(
                    "INSERT INTO inflight VALUES (?, ?, ?, ?, ?)",
                    (self.key, token, self._host, os.getpid(), now),
                )
            conn.execute("COMMIT")
            return wait, reason
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _free_dead_holders(self, conn: sqlite3.Connection, now: float) -> None:
        rows = conn.execute(
            "SELECT token, host, pid, since FROM inflight WHERE key = ?", (self.key,)
        ).fetchall()
        for token, host, pid, since in rows:
            dead = not _pid_alive(pid) if host == self._host else now - since > FOREIGN_LEASE_SECONDS
            if dead:
                conn.execute("DELETE FROM inflight WHERE token = ?", (token,))

    def _wait_needed(self, conn: sqlite3.Connection, now: float) -> tuple[float, str]:
        (in_flight,) = conn.execute("SELECT COUNT(*) FROM inflight WHERE key = ?", (self.key,)).fetchone()
        if in_flight >= self.max_concurrent:
            return 0.25, f"{self.max_concurrent} requests already in flight"
        for window in self.windows:
            span = window.seconds + WINDOW_SLACK_SECONDS
            rows = conn.execute(
                "SELECT ts FROM starts WHERE key = ? AND ts > ? ORDER BY ts DESC LIMIT ?",
                (self.key, now - span, window.limit),
            ).fetchall()
            if len(rows) >= window.limit:
                oldest = rows[-1][0]
                return max(oldest + span - now, 0.001), _describe(window)
        return 0.0, ""


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS starts (key TEXT, ts REAL)")
        conn.execute("CREATE INDEX IF NOT EXISTS starts_key_ts ON starts (key, ts)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS inflight (key TEXT, token TEXT PRIMARY KEY, host TEXT, pid INTEGER,"
            " since REAL)"
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _enable_wal(conn: sqlite3.Connection) -> None:
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    if str(mode).lower() != "wal":
        conn.execute("PRAGMA journal_mode=WAL")


def _retry_locked(step: Callable[[], object], deadline_seconds: float = BUSY_TIMEOUT_SECONDS) -> None:
    """Run ``step``, again after a short pause while SQLite answers "database is locked"."""
    deadline = time.monotonic() + deadline_seconds
    pause = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _describe(window: Window) -> str:
    if window.seconds >= 3600:
        return f"the {window.limit}/hour budget is used up"
    if window.seconds > 1:
        return f"the {window.limit} per {window.seconds:g} s budget is used up"
    return f"the {window.limit}/second budget is used up"
