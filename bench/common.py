"""What the benchmark parent and its children share; stdlib only, so the parent stays small."""

from __future__ import annotations

from dataclasses import dataclass

# The sandbox's default project and service account (see sandbox/config.py).
USERNAME = "sandbox-user"
SECRET = "sandbox-secret"
PROJECT_ID = 1

# Exit codes of a measured child that the parent tells apart: a wrong result must stop the benchmark,
# an ijson backend that cannot read the data is a finding to report (and measure with another backend).
EXIT_MISMATCH = 2
EXIT_BACKEND_ABORTED = 3


@dataclass(frozen=True)
class Job:
    """One measurement, sent to the child as JSON."""

    path: str
    url: str
    day: str
    expected_rows: int
    expected_fingerprint: str
    workdir: str
    ijson_backend: str = "yajl2_c"


@dataclass
class Outcome:
    """What the child reports back (the parent adds the peak RSS it gets from wait4)."""

    rows: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    body_bytes: int | None = None
    files: int = 0
    output_bytes: int = 0
    import_rss_kib: int = 0
    self_peak_rss_kib: int = 0
    note: str = ""
    error: str | None = None


class Mismatch(RuntimeError):
    """The path produced a different day than the sandbox served."""


class BackendAborted(RuntimeError):
    """The ijson backend raised on the data: reported, not hidden."""


def check_rows(job: Job, rows: int) -> None:
    if rows != job.expected_rows:
        raise Mismatch(f"{job.path}: {rows} rows, the sandbox served {job.expected_rows}")
