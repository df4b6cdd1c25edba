"""`python -m flows.status_terminal` (`make status`): the destination's sync status as a compact terminal table.

Default: the local folder ``data`` (the deployments' own), or a saved destination block (``--block
<block type slug>/<name>``, loaded from the Prefect server). Mixpanel's counts are refreshed when the
credentials block can be loaded from the Prefect server and Mixpanel answers; otherwise the table is drawn
offline from what each day recorded. Every committed file is checked to exist (``--verify``: re-read).
Exit 0 only when every day is in sync (``in_sync`` or ``purged``), 1 when a day is not, 2 when no
status can be drawn (one sentence says why).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import httpx
from prefect.settings import PREFECT_API_URL

from blocks.destinations.local import LocalDestination
from blocks.mixpanel import MixpanelCredentials
from flows.runtime import synchronous
from flows.status import sync_status
from tasks.errors import PipelineError
from tasks.sync.status import DEFAULT_DAYS, HEALTHY, Status, build_status

RUN_OF_SAME = 3  # consecutive healthy days shown as one line from this many on


class Refused(Exception):
    """No status can be drawn: one sentence."""


def server_answers(api_url: str | None) -> bool:
    if not api_url:
        return False
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


def load_block(slug_name: str) -> Any:
    from prefect.blocks.core import Block

    import blocks.destinations.catalog  # noqa: F401  (every block class, so Block.load finds its type)

    if "/" not in slug_name:
        raise Refused(
            f"BLOCK={slug_name!r} is not <block type slug>/<name>, e.g. mixpanel-duckdb-warehouse/warehouse."
        )
    try:
        return synchronous(Block.load(slug_name))
    except (ValueError, KeyError) as exc:
        raise Refused(
            f"the Prefect server has no block {slug_name!r} ({exc}): name a saved destination block."
        ) from None


def credentials_of(name: str, online: bool, notes: list[str]) -> MixpanelCredentials | None:
    if not online:
        notes.append(
            "offline, or the Prefect server does not answer: the counts shown are the last ones each day recorded."
        )
        return None
    try:
        credentials: MixpanelCredentials = synchronous(MixpanelCredentials.load(name))
        return credentials
    except ValueError:
        notes.append(
            f"no MixpanelCredentials block {name!r}: the counts shown are the last ones each day recorded."
        )
        return None


def project_of(path: str, given: int | None) -> int:
    """The project id: given, or the only project folder holding manifests in the local folder."""
    if given is not None:
        return given
    from pathlib import Path

    found = sorted(
        int(p.name)
        for p in Path(path).glob("*")
        if p.name.isdigit() and (p / "_state" / "manifests").is_dir()
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise Refused(
            f"{Path(path).absolute()} holds no project's committed day: export a day first "
            "(make run DEPLOYMENT=mixpanel-events/events-daily), or name the folder with DATA_DIR=."
        )
    raise Refused(f"{Path(path).absolute()} holds projects {found}: name one with PROJECT=<id>.")


def draw(status: Status, where: str, out: TextIO) -> None:
    rows = status.rows
    healthy = sum(r["state"] in HEALTHY for r in rows)
    now = datetime.now(tz=UTC)
    print(f"{where}: {healthy} of {len(rows)} day(s) in sync; {status.freshness(now)}.", file=out)
    for note in status.notes:
        print(f"  note: {note}", file=out)
    print(
        f"{'day':<23} {'state':<10} {'held':>9} {'Mixpanel':>9} {'diff':>6}  exported     checked", file=out
    )
    index = 0
    while index < len(rows):
        end = index
        while (
            end + 1 < len(rows)
            and rows[end + 1]["state"] == rows[index]["state"]
            and rows[index]["state"] in HEALTHY
        ):
            end += 1
        if end - index + 1 >= RUN_OF_SAME:
            first, last = rows[index], rows[end]
            label = f"{first['day']}..{str(last['day'])[5:]}"
            print(f"{label:<23} {first['state']:<10} {f'({end - index + 1} days)':>9}", file=out)
        else:
            for row in rows[index : end + 1]:
                print(_line(row), file=out)
        index = end + 1
    for row in rows:
        if row["state"] not in HEALTHY:
            print(f"{row['day']} {row['state']}: {row['reason']}", file=out)


def _line(row: dict[str, object]) -> str:
    def num(value: object) -> str:
        return "-" if value is None else str(value)

    def when(value: object) -> str:
        return value.strftime("%m-%d %H:%M") if isinstance(value, datetime) else "-"

    return (
        f"{row['day']!s:<23} {row['state']!s:<10} {num(row['rows_held']):>9} {num(row['mixpanel_rows']):>9} "
        f"{num(row['difference']):>6}  {when(row['exported_at']):<12} {when(row['checked_at'])}"
    )


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", default="", help="<block type slug>/<name> of a saved destination block")
    parser.add_argument("--data", default="data", help="the local folder, when no block is named")
    parser.add_argument("--credentials", default="mixpanel", help="the MixpanelCredentials block's name")
    parser.add_argument("--project", type=int, default=None, help="the project id, when it cannot be found")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--verify", action="store_true", help="re-read every committed file")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="ask neither the Prefect server nor Mixpanel: the counts each day recorded (a folder of another "
        "project than the server's `mixpanel` block, such as the demo's)",
    )
    args = parser.parse_args(argv)
    online = not args.offline and server_answers(PREFECT_API_URL.value())
    notes: list[str] = []
    try:
        if args.block and not online:
            raise Refused(
                f"BLOCK={args.block} is loaded from the Prefect server at {PREFECT_API_URL.value()}, which does not "
                "answer: start it (make server), or leave BLOCK out for the local folder."
            )
        credentials = credentials_of(args.credentials, online, notes)
        block = load_block(args.block) if args.block else LocalDestination(path=args.data)
        project = credentials.project_id if credentials else args.project
        if project is None:
            project = project_of(args.data, None) if not args.block else None
        if project is None:
            raise Refused("name the project with PROJECT=<id>: no MixpanelCredentials block could be loaded.")
        lake = block.connect(project)
        if credentials is not None:
            status = sync_status(credentials, lake, args.days, args.verify)
        else:
            yesterday = datetime.now(tz=UTC).date() - timedelta(days=1)
            status = build_status(lake, yesterday, args.days, None, args.verify)
    except (Refused, PipelineError) as exc:
        print(exc, file=sys.stderr)
        return 2
    status.notes[:0] = notes
    draw(status, lake.describe(lake.project_prefix), out)
    return 0 if status.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
