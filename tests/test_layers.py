"""The package's import layers (README, Layout) and the methods' independence: checked by import-linter against
pyproject.toml's contracts.

A module that imports from a layer above its own (function-local imports included), or a method that imports
another method instead of the kit, fails this test, so either fails CI.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]' installs import-linter")
    return [exe]


def test_imports_follow_the_layers() -> None:
    proc = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the package where the data layer imports the engine fails it."""
    pkg = tmp_path / "src" / "svldrl"
    shutil.copytree(ROOT / "src" / "svldrl", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    bad = pkg / "data" / "splits.py"
    bad.write_text(
        bad.read_text() + "\n\ndef _upward():\n    from svldrl.engine import trainer  # noqa: F401\n"
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {"PYTHONPATH": str(tmp_path / "src"), "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run(_lint_imports(), cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "svldrl.data.splits -> svldrl.engine.trainer" in proc.stdout, proc.stdout[
        -3000:
    ]


def test_a_method_importing_another_breaks_the_independence_contract(tmp_path: Path) -> None:
    """Methods share parts through svldrl.methods.kit only: svldrl importing the tloss method fails the check."""
    pkg = tmp_path / "src" / "svldrl"
    shutil.copytree(ROOT / "src" / "svldrl", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    bad = pkg / "methods" / "svldrl.py"
    bad.write_text(
        bad.read_text() + "\n\ndef _sibling():\n    from svldrl.methods import tloss  # noqa: F401\n"
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {"PYTHONPATH": str(tmp_path / "src"), "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run(_lint_imports(), cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "svldrl.methods.svldrl -> svldrl.methods.tloss" in proc.stdout, (
        proc.stdout[-3000:]
    )


def test_every_method_module_is_in_the_independence_contract() -> None:
    """A new method file left out of the contract could import another method unnoticed."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    listed = next(c["modules"] for c in contracts if c["type"] == "independence")
    methods = ROOT / "src" / "svldrl" / "methods"
    files = sorted(f"svldrl.methods.{p.stem}" for p in methods.glob("*.py") if p.stem != "__init__")
    assert sorted(listed) == files
