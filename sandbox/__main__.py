"""CLI: `python -m sandbox --port 0 ...` serves a sandbox project until SIGTERM/SIGINT.

Prints `sandbox listening on http://127.0.0.1:PORT` once ready so a parent process can read the port.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import date
from pathlib import Path
from types import FrameType

from sandbox.cache import day_summary
from sandbox.config import ProjectConfig
from sandbox.export import parse_date
from sandbox.server import SandboxServer


def _limit(value: str) -> int | None:
    # 0 disables a rate limit.
    n = int(value)
    return n if n > 0 else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sandbox", description="Mixpanel-compatible local export/engage API"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--project-id", type=int, default=1)
    p.add_argument("--username", default="sandbox-user")
    p.add_argument("--secret", default="sandbox-secret")
    p.add_argument("--legacy-secret", default="legacy-secret")
    p.add_argument("--events-per-day", type=int, default=500)
    p.add_argument("--time-mode", choices=["utc", "local"], default="utc")
    p.add_argument("--timezone", default="UTC")
    p.add_argument("--identity-mode", choices=["simplified", "original"], default="simplified")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-gzip", action="store_true")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument(
        "--gzip-cached",
        action="store_true",
        help="with --cache-dir: compress a plain request's body once per date range and serve it from disk",
    )
    p.add_argument("--today", type=date.fromisoformat, help="YYYY-MM-DD override of 'today'")
    p.add_argument(
        "--created",
        type=date.fromisoformat,
        help="YYYY-MM-DD the project was created (earlier days are empty)",
    )
    p.add_argument("--max-per-second", type=_limit, default=3, help="0 disables")
    p.add_argument("--max-concurrent", type=_limit, default=100, help="0 disables")
    p.add_argument("--max-per-hour", type=_limit, default=60, help="0 disables")
    p.add_argument("--profiles", type=int, help="Engage user profiles (default: one per user in the events)")
    p.add_argument("--anonymous-profiles", type=int, default=0, help="extra $device: profiles")
    p.add_argument(
        "--query-max-per-hour", type=_limit, default=60, help="Engage queries per hour, 0 disables"
    )
    p.add_argument(
        "--query-max-concurrent", type=_limit, default=5, help="concurrent Engage queries, 0 disables"
    )
    p.add_argument("--prewarm", metavar="FROM:TO", help="generate and cache these days before serving")
    return p


def config_from_args(args: argparse.Namespace) -> ProjectConfig:
    return ProjectConfig(
        project_id=args.project_id,
        username=args.username,
        secret=args.secret,
        legacy_secret=args.legacy_secret,
        time_mode=args.time_mode,
        timezone=args.timezone,
        events_per_day=args.events_per_day,
        seed=args.seed,
        identity_mode=args.identity_mode,
        today=args.today,
        created=args.created,
        max_per_second=args.max_per_second,
        max_concurrent=args.max_concurrent,
        max_per_hour=args.max_per_hour,
        gzip=not args.no_gzip,
        cache_dir=args.cache_dir,
        gzip_cached=args.gzip_cached,
        profiles=args.profiles,
        anonymous_profiles=args.anonymous_profiles,
        query_max_per_hour=args.query_max_per_hour,
        query_max_concurrent=args.query_max_concurrent,
    )


def prewarm(cfg: ProjectConfig, spec: str) -> None:
    start, _, end = spec.partition(":")
    first = parse_date({"d": start}, "d")
    last = parse_date({"d": end or start}, "d")
    day = first
    while day <= last:
        day_summary(cfg, day)
        day = date.fromordinal(day.toordinal() + 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.prewarm:
        prewarm(cfg, args.prewarm)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = SandboxServer(cfg, host=args.host, port=args.port).start()
    print(f"sandbox listening on {server.url}", flush=True)
    while not stop.wait(0.2):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
