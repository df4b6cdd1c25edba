"""What every local server fixture needs: a free loopback port, a stop that cannot hang, and the
processes a server or worker started (flow-run processes carry their run id in their environment)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path

# Ports are picked below the kernel's ephemeral range (32768-60999 by default): an outgoing connection
# takes its local port from that range, and with thousands of them in a run one could take a port
# between the probe below and the server's bind. Each pytest-xdist worker picks from a slice of its
# own, so parallel workers never pick the same port either.
PORTS_FROM = 20000
SLICE = 500
_handed_out: set[int] = set()
_random = random.Random()  # its own: Hypothesis watches the global one during its tests


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    start = PORTS_FROM + (index % 25) * SLICE
    return range(start, start + SLICE)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nothing is bound to, not handed out before by this process.

    The search starts at a random place of the worker's slice, so that two test sessions run side by
    side (two checkouts on one machine) rarely probe the same ports; a server that still loses the race
    fails to bind and its fixture starts it again on another port.
    """
    ports = _slice()
    offset = _random.randrange(len(ports))
    for i in range(len(ports)):
        port = ports[(offset + i) % len(ports)]
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {ports.start}-{ports.stop - 1}")


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: some servers ignore SIGTERM while busy."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def descendants(root: int) -> dict[int, dict[str, str]]:
    """Every descendant of ``root`` with its environment; a process that ended meanwhile is left out."""
    found: dict[int, dict[str, str]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                raw = Path(f"/proc/{child}/environ").read_bytes()
            except OSError:
                continue
            found[child] = dict(
                item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
            )
            todo.append(child)
    return found
