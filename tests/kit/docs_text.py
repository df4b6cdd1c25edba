"""The documentation's snippets as the tests read them: verbatim, from README.md or a page under docs/.

A snippet a user reads is the snippet a test runs: a test never keeps its own copy of a documented
command or query. A block a test runs is marked in the page with ``<!-- ops:<name> (what runs it) -->``
on the line before its fence, so moving it to another page moves the marker with it.
"""

from __future__ import annotations

import re

from tests.kit.checkout import ROOT


def page_text(page: str) -> str:
    """The text of a documentation page, by its path from the repository's root."""
    return (ROOT / page).read_text()


def marked_block(marker: str, page: str = "README.md") -> list[str]:
    """The command lines of the bash block after ``<!-- ops:<marker> ... -->`` in ``page``, comments dropped."""
    found = re.search(rf"<!-- ops:{marker}\b[^>]*-->\s*```bash\n(.*?)```", page_text(page), re.S)
    assert found, f"{page} has no block marked <!-- ops:{marker} -->"
    lines = [line.split("#", 1)[0].strip() for line in found.group(1).splitlines()]
    return [line for line in lines if line]


def fenced_blocks(page: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of ``language`` in ``page``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", page_text(page), re.S | re.M)
