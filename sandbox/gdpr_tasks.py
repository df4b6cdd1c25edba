"""State of the GDPR API: deletion tasks, the 1 request/second window and the `fail_next` knob."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PENDING = "PENDING"
SUCCESS = "SUCCESS"


@dataclass
class DeletionTask:
    distinct_ids: list[str]
    compliance_type: str
    status: str = PENDING
    polls: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "distinct_ids": list(self.distinct_ids),
            "compliance_type": self.compliance_type,
            "status": self.status,
            "polls": self.polls,
        }


class GdprTasks:
    """Thread-safe registry of deletion tasks plus the API's rate window and injected failures."""

    def __init__(self, max_per_second: int | None, polls_until_done: int) -> None:
        self.max_per_second = max_per_second
        self.polls_until_done = polls_until_done
        self._lock = threading.Lock()
        self._tasks: dict[str, DeletionTask] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the rate window and pending failures (tasks stay: they are the deletion history)."""
        with self._lock:
            self._times: deque[float] = deque()
            self._fail_next = 0

    def clear_tasks(self) -> None:
        with self._lock:
            self._tasks.clear()

    def admit(self) -> bool:
        """One more request within Mixpanel's sliding 1-second window, or False (answer 429)."""
        now = time.monotonic()
        with self._lock:
            while self._times and self._times[0] <= now - 1.0:
                self._times.popleft()
            if self.max_per_second is not None and len(self._times) >= self.max_per_second:
                return False
            self._times.append(now)
            return True

    def set_fail_next(self, n: int) -> None:
        with self._lock:
            self._fail_next = n

    def take_failure(self) -> bool:
        with self._lock:
            if self._fail_next <= 0:
                return False
            self._fail_next -= 1
            return True

    def create(self, distinct_ids: list[str], compliance_type: str) -> str:
        task_id = str(uuid.uuid4())
        with self._lock:
            self._tasks[task_id] = DeletionTask(list(distinct_ids), compliance_type)
        return task_id

    def poll(self, task_id: str, on_success: Callable[[list[str]], None]) -> DeletionTask | None:
        """A copy of the task after this poll, None for an unknown id.

        The first `polls_until_done` polls answer PENDING (Mixpanel really takes days to weeks). The poll
        that first reports SUCCESS calls ``on_success(ids)`` before any poll can see SUCCESS."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            task.polls += 1
            if task.status == PENDING and task.polls > self.polls_until_done:
                on_success(task.distinct_ids)
                task.status = SUCCESS
            return DeletionTask(**task.as_dict())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {task_id: task.as_dict() for task_id, task in self._tasks.items()}

    def fail_next(self) -> int:
        with self._lock:
            return self._fail_next
