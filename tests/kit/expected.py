"""What the sandbox served, worked out without the code under test: the figures a test compares with."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

from sandbox import SandboxServer, day_lines


def epoch_ms(day: date, hours: float) -> int:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int((start + timedelta(hours=hours)).timestamp() * 1000)


def expected_simplified(server: SandboxServer, days: Iterable[date]) -> dict[str, str]:
    """Written from the sandbox's served lines with json, not with the code under test: the first
    user a device is seen with (in time order) owns it, users map to themselves."""
    seen: list[tuple[int, str, str]] = []
    for day in days:
        for line in day_lines(server.cfg, day):
            props = json.loads(line)["properties"]
            if props.get("$device_id") and props.get("$user_id"):
                seen.append((props["time"], "$device:" + props["$device_id"], props["$user_id"]))
    owner: dict[str, str] = {}
    for _, device, user in sorted(seen):
        owner.setdefault(device, user)
    mapping = dict(owner)
    mapping.update({user: user for user in owner.values()})
    return mapping
