"""transformers' own common model tests, fetched at test time from the installed release's source distribution.

Nothing of transformers' test code lives in this repository. :func:`load` finds the installed transformers version,
downloads that release's sdist from PyPI with ``pip download`` (once: it is cached under
``$COGLENS_HF_TESTS_CACHE``, default ``$COGLENS_CACHE/transformers-tests`` or ``~/.cache/coglens/transformers-tests``),
extracts its top-level ``tests/*.py`` unchanged into a package ``hf_transformers_tests`` and puts that on
``sys.path``.

The sdist carries ``tests/test_modeling_common.py`` but not the two sub-packages it imports from,
``tests/generation/test_utils.py`` (``GenerationTesterMixin``) and ``tests/exporters/test_export.py``
(``ExportTesterMixin``): we write stand-ins for those two, empty mixins and clearly marked as ours, instead of
editing transformers' files. Generation is covered by our own ``test_hf_generation_checks.py``.

When the download fails the module that asked is skipped with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = "hf_transformers_tests"  # a name nothing else on sys.path uses (our tests/ folder is not a package)
STANDIN_HEADER = (
    '"""STAND-IN written by coglens (tests/transformers_common/hf_common_suite.py), not transformers\' code: the '
    'sdist lacks this module."""\n\n'
)
STANDINS = {
    "generation/test_utils.py": STANDIN_HEADER + "class GenerationTesterMixin:\n    pass\n",
    "exporters/test_export.py": STANDIN_HEADER + "class ExportTesterMixin:\n    pass\n",
}


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def cache_root() -> Path:
    if os.environ.get("COGLENS_HF_TESTS_CACHE"):
        return Path(os.environ["COGLENS_HF_TESTS_CACHE"]).expanduser()
    return Path(os.environ.get("COGLENS_CACHE", "~/.cache/coglens")).expanduser() / "transformers-tests"


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"transformers=={version}", "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    archives = sorted(into.glob("transformers-*.tar.gz"))
    if done.returncode != 0 or not archives:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`pip download transformers=={version}` (sdist) failed: {' | '.join(tail)}")
    return archives[0]


def _extract_tests(archive: Path, package_dir: Path) -> None:
    """``<sdist>/tests/*.py`` (top level only, unchanged) into ``package_dir``, plus our two stand-ins."""
    package_dir.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                source = tar.extractfile(member)
                assert source is not None
                (package_dir / parts[2]).write_bytes(source.read())
    if not (package_dir / "test_modeling_common.py").is_file():
        raise RuntimeError(f"{archive.name} has no tests/test_modeling_common.py")
    (package_dir / "__init__.py").touch()
    for relative, text in STANDINS.items():
        path = package_dir / relative
        if path.exists():  # a future sdist that ships the real module: use it
            continue
        path.parent.mkdir(exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)


def ensure_suite(version: str) -> Path:
    """The folder to put on sys.path (it holds the package); downloads and extracts on first use."""
    root = cache_root() / version
    if (root / PACKAGE / "test_modeling_common.py").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        staging = Path(tmp) / "tree"
        _extract_tests(_download_sdist(version, Path(tmp)), staging / PACKAGE)
        shutil.rmtree(root, ignore_errors=True)
        try:
            staging.rename(root)  # atomic: a half-written folder is never taken for a cached one
        except OSError:
            if not (root / PACKAGE / "test_modeling_common.py").is_file():  # not a concurrent run's copy
                raise
    return root


def load(module: str = "test_modeling_common") -> ModuleType:
    """``hf_transformers_tests.<module>`` of the installed release; skips (or under CI=true fails) without it."""
    version = transformers_version()
    try:
        root = ensure_suite(version)
    except Exception as exc:  # no network, no sdist for this version, pip missing...
        root, reason = None, f"transformers {version}'s common tests are unavailable: {exc}"
    if root is None:
        if os.environ.get("CI") == "true":  # CI must run them: never a silent skip there
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{PACKAGE}.{module}")
