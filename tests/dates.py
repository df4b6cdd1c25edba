"""Run the calendar-dependent tests as if today were each of many consecutive dates.

`make test-dates` (``python -m tests.dates``): for every date, the tests marked ``calendar`` (those that
take their days from the machine's calendar, tests/conftest.py) run in a pytest whose whole process tree
(its xdist workers, the sandbox, the Prefect test server, the store emulators) sees that date, through
libfaketime (Debian's ``faketime``). The clock keeps running from that date on, so rate limits, waits
and timestamps behave as on any day; only the calendar moves. The monotonic clock moves by the same
offset (libfaketime's absolute sleeps fail with EINVAL when only the wall clock moves). A test that fails on one date only took its data from the calendar.

Only dates up to today can be tried: the kernel stamps a new file with the real time, which
libfaketime does not move, so under a later date every file just written would look days old (a
young staging file taken for a stale one). Under an earlier date a new file looks a little young, which
no rule of the product acts on.

Prints one line a date and, last, ``N passed, N failed`` counted in dates; exits 1 if any date failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

LIBRARY = "libfaketime.so.1"
SEARCHED = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime")
SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed|deselected|error).*?) in [0-9.]+s", re.MULTILINE)
PROBE = "from datetime import UTC, datetime; print(datetime.now(UTC).date())"


def libfaketime() -> Path:
    for folder in SEARCHED:
        found = Path(folder) / LIBRARY
        if found.exists():
            return found
    sys.exit(f"{LIBRARY} is not installed: `make test-dates` installs Debian's faketime package")


def shifted_env(day: date, library: Path) -> dict[str, str]:
    """The environment of a process tree whose calendar starts at ``day`` (same time of day as now)."""
    offset = (day - datetime.now(UTC).date()).days
    return os.environ | {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"{offset:+d}d",
    }


def check_shift(day: date, env: dict[str, str]) -> None:
    """A date is only tried if a child process really sees it (a missing or ignored preload would
    otherwise run every 'date' as today)."""
    seen = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True).stdout
    if seen.strip() != day.isoformat():
        sys.exit(f"the calendar was not moved to {day}: a child process saw {seen.strip() or 'nothing'}")


def run_one(day: date, library: Path, pytest_args: list[str], log: Path) -> tuple[bool, str]:
    env = shifted_env(day, library)
    check_shift(day, env)
    command = [sys.executable, "-m", "pytest", "-m", "calendar", "-p", "no:cacheprovider", *pytest_args]
    with log.open("w") as out:
        code = subprocess.call(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    summaries = SUMMARY.findall(text)
    return code == 0, summaries[-1] if summaries else f"pytest exited {code} without a summary"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30, help="how many consecutive dates (default 30)")
    parser.add_argument(
        "--start", type=date.fromisoformat, help="the first date (default: the DAYS days up to today)"
    )
    parser.add_argument("--logs", type=Path, default=Path(".artifacts/dates"))
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (default: -n 4)")
    args = parser.parse_args()
    today = datetime.now(UTC).date()
    start = args.start or today - timedelta(days=args.days - 1)
    if start + timedelta(days=args.days - 1) > today:
        sys.exit(f"the dates must end by today ({today}): a later date makes every new file look old")
    library = libfaketime()
    args.logs.mkdir(parents=True, exist_ok=True)
    pytest_args = args.pytest_args or ["-n", "4", "--dist", "loadgroup", "-q"]
    failed = []
    for i in range(args.days):
        day = start + timedelta(days=i)
        ok, summary = run_one(day, library, pytest_args, args.logs / f"{day}.log")
        print(f"{day}: {'ok  ' if ok else 'FAIL'} {summary}", flush=True)
        if not ok:
            failed.append(day)
    print(f"dates: {args.days - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(f"failed dates (logs in {args.logs}): {', '.join(map(str, failed))}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
