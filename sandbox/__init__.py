"""Mixpanel-compatible local API server for tests, the demo and benchmarks."""

from sandbox.config import ProjectConfig
from sandbox.data import day_lines, fingerprint, iter_day_lines
from sandbox.faults import Fault, Quirk
from sandbox.people import people_fingerprint, profile_lines
from sandbox.server import SandboxServer

__all__ = [
    "Fault",
    "ProjectConfig",
    "Quirk",
    "SandboxServer",
    "day_lines",
    "fingerprint",
    "iter_day_lines",
    "people_fingerprint",
    "profile_lines",
]
