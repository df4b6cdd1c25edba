"""Our blocks pass Prefect's standard block checks, so the UI form explains every field."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.destinations.catalog import BLOCK_TYPES
from blocks.destinations.local import LocalDestination
from tasks.errors import FatalError


@pytest.mark.parametrize("block_class", BLOCK_TYPES)
class TestStandardSuite(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block_class: type[Block]) -> type[Block]:
        return block_class


def test_an_unwritable_destination_folder_fails_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FatalError, match="cannot write to the destination folder"):
        LocalDestination(path=str(blocker / "sub")).connect(1)
