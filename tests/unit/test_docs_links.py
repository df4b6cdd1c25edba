"""The documentation holds together: every relative link of README.md and docs/ reaches a file, every
``#anchor`` a heading of its page (GitHub's slugs), every page under docs/ is linked from somewhere, the
README stays a five-minute read (under 300 lines), and docs/development.md's layout table names every
module of flows/, blocks/ and tasks/ and nothing that is not there.

Pure text: no server, no network; links to other sites are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.kit.checkout import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
LAYOUT_PAGE = ROOT / "docs" / "development.md"
README_MAX_LINES = 300  # the README says what it is, how to run it and where to read on; the rest is docs/

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"``.+?``|`[^`\n]*`", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced blocks and code spans removed (links there are examples)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading (github-slugger): the rendered text lower-cased, every character but
    letters, digits, ``-`` and ``_`` removed, each space turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats numbered as GitHub does), HTML anchors."""
    text = FENCE.sub("", page.read_text())
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for _, title in HEADING.findall(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text()))


def relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)


def test_the_slug_rules_match_githubs() -> None:
    # headings of this repository's shapes: code, punctuation, repeated spaces and hyphens, non-ASCII
    assert slug("What `make deploy` does") == "what-make-deploy-does"
    assert slug("Redshift Spectrum (and Athena): S3 plus a Glue catalog") == (
        "redshift-spectrum-and-athena-s3-plus-a-glue-catalog"
    )
    assert slug("Alerts: told when a run fails, the data falls behind") == (
        "alerts-told-when-a-run-fails-the-data-falls-behind"
    )
    assert slug("foo_bar -- baz") == "foo_bar----baz"
    assert slug("Ünïcödé → letters") == "ünïcödé--letters"


def test_the_link_parser_sees_links_outside_code_only(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "See [a](a.md#x), ![img](i.png 'no') [b](<b.md>) and [c\ncontinued](c.md).\n"
        "`[not](code.md)`\n```\n[not](fenced.md)\n```\n# Heading one\n## Heading one\n"
    )
    assert links(page) == ["a.md#x", "i.png", "b.md", "c.md"]
    assert anchors(page) == {"heading-one", "heading-one-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in filter(relative, links(page)):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT)}")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_page_of_docs_is_linked_from_another_page() -> None:
    linked = {
        (page.parent / target.partition("#")[0]).resolve()
        for page in PAGES
        for target in filter(relative, links(page))
        if target.partition("#")[0]
    }
    orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"pages no other page links to: {orphans}"


def test_the_readme_is_under_300_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move reference to a page under docs/"


def layout_rows() -> list[tuple[list[str], list[str]]]:
    """The layout table's rows: the paths its first column names (a bare file name continues the folder
    of the path before it, as in ``blocks/destinations/local.py``, ``s3.py``) and the code spans of the
    second column (a folder's row names its modules there)."""
    text = LAYOUT_PAGE.read_text()
    section = text[text.index("\n## Layout\n") :]
    section = section[: section.find("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not line.startswith("| `"):
            continue
        paths: list[str] = []
        folder = ""
        for span in re.findall(r"`([^`]+)`", cells[0]):
            path = span if "/" in span else folder + span
            folder = path[: path.rfind("/") + 1]
            paths.append(path)
        rows.append((paths, re.findall(r"`([^`]+)`", cells[1])))
    return rows


def test_the_layout_table_names_every_module_and_only_those() -> None:
    rows = layout_rows()
    assert len(rows) > 20, "docs/development.md has no layout table under `## Layout`"
    named: set[str] = set()
    wrong = []
    for paths, spans in rows:
        for path in paths:
            if not (ROOT / path).exists():
                wrong.append(f"{path} does not exist")
            named.add(path)
            if path.endswith("/") and path.split("/")[0] in ("flows", "blocks", "tasks"):
                for module in (s for s in spans if re.fullmatch(r"[a-z_]+", s)):
                    if not (ROOT / path / f"{module}.py").exists():
                        wrong.append(f"{path}{module}.py does not exist")
                    named.add(f"{path}{module}.py")
    modules = sorted(
        str(p.relative_to(ROOT))
        for top in ("flows", "blocks", "tasks")
        for p in (ROOT / top).rglob("*.py")
        if p.name != "__init__.py"
    )
    missing = [m for m in modules if m not in named]
    assert not wrong and not missing, f"layout table: {wrong}; modules it does not name: {missing}"
