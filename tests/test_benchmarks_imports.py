"""The benchmark scripts are not run by the tests (they take minutes to hours), but every name they
import from the package must exist: a moved function breaks a benchmark only at its stage."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def medmark_imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from medmark... import name`` in ``path``, nested ones too."""
    tree = ast.parse(path.read_text())
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medmark")
        for alias in node.names
    ]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_package_name_a_benchmark_imports_exists(path):
    missing = []
    for module, name in medmark_imports(path):
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.name} imports names the package no longer has: {missing}"


def test_the_scan_sees_nested_imports(tmp_path):
    src = tmp_path / "b.py"
    src.write_text("def f():\n    from medmark.stages.xmark import release_stage\n")
    assert medmark_imports(src) == [("medmark.stages.xmark", "release_stage")]
