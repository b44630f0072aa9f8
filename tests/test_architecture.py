"""Layers point one way; twin is pure physics; xrt stays inside its adapter."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_import_linter_contracts_hold():
    # the venv need not be activated (CI runs .venv/bin/python): look beside the interpreter
    beside = Path(sys.executable).parent / "lint-imports"
    exe = str(beside) if beside.exists() else shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e .[test]")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" not in out.stdout.split("Contracts:")[-1].replace("0 broken", "")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_adapter_imports_xrt():
    offenders = [p.name for p in (ROOT / "twin").glob("*.py")
                 if "xrt" in _imports(p) and p.name != "_xrt_backend.py"]
    assert offenders == []


def test_no_assert_for_validation_in_package_code():
    for pkg in ("twin", "agents", "controllers", "ioc_sim"):
        for p in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(p.read_text())
            assert not any(isinstance(n, ast.Assert) for n in ast.walk(tree)), p
