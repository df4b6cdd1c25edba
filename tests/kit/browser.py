"""Debian's Chromium driven by Playwright (`make browser`), a module-scoped ``browser`` fixture.

Registered as a plugin in tests/conftest.py, so the UI tests share it without importing a test module.
A missing browser skips, unless MP_REQUIRE_BROWSER is set (CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.kit.checkout import ROOT

ARTIFACTS = Path(os.environ.get("MP_TEST_ARTIFACTS", ROOT / ".artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# without the background-networking flags Chromium keeps dialling Google on this closed network
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("MP_REQUIRE_BROWSER"):
            pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make browser`.")
        pytest.skip("Chromium is not installed: `make browser` installs Debian's package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()
