"""The sync status drawn for a person: an SVG chart of events per day, destination against Mixpanel, inside
a markdown page with the freshness sentence and the days that need attention.

Prefect's UI (3.9, both its V1 and V2 pages) sanitizes a markdown artifact's inline ``<svg>`` to an empty
element but shows an image whose source is a ``data:`` URI, and renders markdown tables: so the chart is an
SVG image carried as ``data:image/svg+xml;base64,…``, and every state a reader must act on is also
written as text in a table below it (an image's text cannot be searched or read by a screen reader).
"""

from __future__ import annotations

import base64
from collections import Counter
from datetime import date, datetime
from html import escape

from tasks.sync.status import HEALTHY, Status

COLORS = {
    "in_sync": "#2e7d32",
    "purged": "#00897b",
    "differs": "#ef6c00",
    "behind": "#f9a825",
    "unchecked": "#9e9e9e",
    "refused": "#6a1b9a",
    "missing": "#c62828",
    "damaged": "#7f0000",
}
MIXPANEL = "#b0bec5"
DESTINATION = "#1e88e5"
PLOT_WIDTH, PLOT, TOP, LEFT, MIN_WIDTH = 560, 180, 40, 56, 520


def held_events(row: dict[str, object]) -> int | None:
    """The destination's count comparable with Mixpanel's (deduplicated), else its rows."""
    mixpanel, difference = row["mixpanel_rows"], row["difference"]
    if isinstance(mixpanel, int) and isinstance(difference, int):
        return mixpanel + difference
    return row["rows_held"] if isinstance(row["rows_held"], int) else None


def chart_svg(status: Status, title: str) -> str:
    """Bars per day: Mixpanel's count (grey, wide) with the destination's (blue, narrow) in front; a strip
    under each day in the colour of its state; differing and missing days marked above their bars."""
    rows = status.rows
    step = max(4.0, min(40.0, PLOT_WIDTH / max(len(rows), 1)))
    width = max(MIN_WIDTH, round(LEFT + len(rows) * step + 24))
    top_value = max(
        [v for r in rows for v in (held_events(r), r["mixpanel_rows"]) if isinstance(v, int)] + [1]
    )
    height = TOP + PLOT + 86
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<text x="{LEFT}" y="31" fill="#444">{escape(status.freshness(_now(rows)))}</text>',
        f'<text x="4" y="{TOP + 8}" fill="#444">{top_value}</text>',
        f'<text x="4" y="{TOP + PLOT}" fill="#444">0</text>',
        f'<line x1="{LEFT - 2}" y1="{TOP + PLOT}" x2="{width - 8}" y2="{TOP + PLOT}" stroke="#888"/>',
    ]
    labelled = -100.0
    for index, row in enumerate(rows):
        x = LEFT + index * step
        parts += _day(row, x, step, top_value)
        if x - labelled >= 44 and (index == len(rows) - 1 or x + 44 <= LEFT + len(rows) * step):
            labelled = x
            day = row["day"]
            label = day.strftime("%m-%d") if isinstance(day, date) else ""
            parts.append(f'<text x="{x:.1f}" y="{TOP + PLOT + 30}" fill="#444">{label}</text>')
    parts += _legend(rows, TOP + PLOT + 52)
    parts.append("</svg>")
    return "".join(parts)


def _day(row: dict[str, object], x: float, step: float, top_value: int) -> list[str]:
    out = []
    scale = PLOT / top_value
    mixpanel, held = row["mixpanel_rows"], held_events(row)
    if isinstance(mixpanel, int):
        out.append(_bar(x, step - 1, mixpanel * scale, MIXPANEL))
    if held is not None:
        out.append(_bar(x + step * 0.25, max(step * 0.5 - 1, 1), held * scale, DESTINATION))
    state = str(row["state"])
    out.append(
        f'<rect x="{x:.1f}" y="{TOP + PLOT + 4}" width="{max(step - 1, 1):.1f}" height="10" '
        f'fill="{COLORS.get(state, "#000")}"><title>{row["day"]}: {state}</title></rect>'
    )
    if state not in HEALTHY and state != "unchecked":
        tip = TOP + PLOT - max(held or 0, mixpanel if isinstance(mixpanel, int) else 0) * scale - 4
        middle = x + step / 2
        out.append(
            f'<path d="M{middle - 4:.1f},{tip - 7:.1f} L{middle + 4:.1f},{tip - 7:.1f} L{middle:.1f},{tip:.1f} Z" '
            f'fill="{COLORS.get(state, "#000")}"/>'
        )
    return out


def _bar(x: float, width: float, value: float, color: str) -> str:
    return (
        f'<rect x="{x:.1f}" y="{TOP + PLOT - value:.1f}" width="{max(width, 1):.1f}" height="{value:.1f}" '
        f'fill="{color}"/>'
    )


def _legend(rows: list[dict[str, object]], y: int) -> list[str]:
    counts = Counter(str(r["state"]) for r in rows)
    items = [("Mixpanel", MIXPANEL), ("destination", DESTINATION)] + [
        (f"{state} {counts[state]}", COLORS[state]) for state in COLORS if counts[state]
    ]
    out, x = [], float(LEFT)
    for text, color in items:
        out.append(f'<rect x="{x:.1f}" y="{y}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{x + 16:.1f}" y="{y + 10}">{escape(text)}</text>')
        x += 24 + 7 * len(text)
    return out


def _now(rows: list[dict[str, object]]) -> datetime:
    moment = rows[0]["computed_at"] if rows else None
    assert isinstance(moment, datetime)
    return moment


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def status_markdown(status: Status, destination: str) -> str:
    """The page of the status artifact: headline, freshness, the chart, the days that need attention."""
    rows = status.rows
    healthy = sum(r["state"] in HEALTHY for r in rows)
    title = f"Events per day, destination (blue) against Mixpanel (grey): {healthy} of {len(rows)} in sync"
    lines = [
        f"## Sync status: {escape(destination)}",
        "",
        f"**{healthy} of {len(rows)} day(s) in sync** ({rows[0]['day']} .. {rows[-1]['day']}). "
        f"**Freshness:** {status.freshness(_now(rows))}.",
        "",
        *[f"> {escape(note)}" for note in status.notes],
        "",
        f"![Events per day, {escape(destination)} against Mixpanel; differing and missing days marked]"
        f"({data_uri(chart_svg(status, title))})",
        "",
    ]
    attention = [r for r in rows if r["state"] not in HEALTHY]
    if not attention:
        return "\n".join([*lines, "Every day matches Mixpanel."])
    lines += [
        "| day | state | destination | Mixpanel | difference | why |",
        "|---|---|---|---|---|---|",
    ]
    for row in attention:
        cells = [row["day"], f"**{row['state']}**", held_events(row), row["mixpanel_rows"], row["difference"]]
        why = str(row["reason"] or "").replace("|", "\\|")
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + f" | {escape(why)} |")
    return "\n".join(lines)
