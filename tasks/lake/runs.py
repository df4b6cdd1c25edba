"""The two ids a run writes into what it commits: its own short id and the Prefect flow run's.

``run_id`` is new for every run and names the files it stages (so a rerun or a racing run never
writes over them) and each manifest it commits; ``flow_run_id`` links a manifest or an audit record
to the Prefect run that made it (None outside a flow run).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class RunIds:
    run_id: str = field(default_factory=new_run_id)
    flow_run_id: str | None = None
