"""A copy of this checkout, as a new user gets it from `git clone`, and the environment that user has:
for the tests that run the README's make targets from scratch (the cluster, the demo, the README drill)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def user_environment(*drop: str) -> dict[str, str]:
    """This process's environment without what the test run set: Prefect's and the pipelines' settings,
    the active environment, make's flags (`make test`'s EXTRAS must not reach a copy's `make setup`)."""
    prefixes = ("PREFECT_", "MP_PIPELINES_", "VIRTUAL_ENV", "MAKE", "MFLAGS", *drop)
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def copy_checkout(target: Path, *, with_uv: bool = False) -> None:
    """What `git clone` would give, plus uncommitted changes: tracked and untracked files, not ignored;
    ``with_uv``: and this checkout's uv, which `make setup` would otherwise install first (pip, seconds)."""
    if with_uv:
        (target / ".tools" / "bin").mkdir(parents=True)
        shutil.copy2(ROOT / ".tools" / "bin" / "uv", target / ".tools" / "bin" / "uv")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
