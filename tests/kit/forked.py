"""Run a Python script in a child process that starts in milliseconds, for the tests that SIGKILL one.

A fresh interpreter that imports Prefect, polars, pyarrow and the cloud SDKs spends ~4 s of CPU before
its first line, and the crash tests start over twenty of them. Here children are forked from
multiprocessing's fork server, which imported the project once per pytest process, before any thread
(obstore's runtime, polars' pool) existed that a fork would break. Each child is still a process of its
own: it dies by SIGKILL as a worker would, and leaves what it wrote, half-written, behind.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# what the killers import: loaded once into the fork server (the catalog brings every installed block)
PRELOAD = [
    "blocks.destinations.catalog",
    "tasks.lake.commit",
    "tasks.mixpanel.client",
    "tasks.pipeline.export",
    "tasks.sync.purge",
    "tasks.sync.registry",
    "tasks.warehouses.tableformat",
]


@dataclass(frozen=True)
class Done:
    returncode: int  # as subprocess gives it: -9 for a process that SIGKILL ended
    stderr: bytes


def run_python(script: str, *argv: str, timeout: float) -> Done:
    """``python -c script *argv`` in ROOT with this process's environment of now, forked."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with tempfile.NamedTemporaryFile(prefix="forked-", suffix=".log") as output:
        child = context.Process(target=_main, args=(script, list(argv), dict(os.environ), output.name))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise TimeoutError(
                f"the child did not end within {timeout:.0f} s: {Path(output.name).read_text()}"
            )
        assert child.exitcode is not None
        return Done(child.exitcode, Path(output.name).read_bytes())


def _main(script: str, argv: list[str], environ: dict[str, str], output: str) -> None:
    """In the child: the caller's environment and folder, output to a file, the script as ``__main__``."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(ROOT)
    log = os.open(output, os.O_WRONLY | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = ["-c", *argv]
    exec(compile(script, "<forked>", "exec"), {"__name__": "__main__"})
