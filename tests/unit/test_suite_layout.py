"""The suite's own shape: each scenario is defined once, test modules share helpers only through
modules that are not tests (tests/kit/, tests/stores/, tests/conftest.py), and every test module lives
in the folder of its kind."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _test_modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def test_no_two_test_functions_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in _test_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                where[node.name].append(str(path.relative_to(TESTS)))
    repeated = {name: files for name, files in where.items() if len(files) > 1}
    assert not repeated, f"one scenario, one test: write it once in the kit and parametrize ({repeated})"


def test_no_test_module_imports_another() -> None:
    found = []
    for path in _test_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith("test_") for n in names):
                found.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not found, f"move what they share into tests/kit/: {found}"


KINDS = {"unit", "destinations", "flows", "ops", "sandbox", "emulators"}


def test_every_test_module_is_in_the_folder_of_its_kind() -> None:
    misplaced = [str(p.relative_to(TESTS)) for p in _test_modules() if p.parent.name not in KINDS]
    assert not misplaced, f"put each in one of tests/{{{','.join(sorted(KINDS))}}}/: {misplaced}"
