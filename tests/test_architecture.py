"""The package keeps its shape: ``cli -> serve | lens | chat -> pipeline -> engine -> processing : modeling``
(pyproject.toml's import-linter contract), nothing below importing anything above."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(src), "HOME": str(cwd)}
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_contract_holds():
    done = _lint(ROOT, ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: the engine importing the server is reported."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "coglens", tmp_path / "src" / "coglens",
                    ignore=shutil.ignore_patterns("__pycache__"))
    engine = tmp_path / "src" / "coglens" / "engine" / "__init__.py"
    engine.write_text(engine.read_text() + "\nimport coglens.serve.app  # noqa\n")
    done = _lint(tmp_path, tmp_path / "src")
    assert done.returncode != 0
    assert "coglens.engine is not allowed to import coglens.serve" in done.stdout
