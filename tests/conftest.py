"""Shared fixtures: the memory-image corpus (tools/corpus) and the kernel's Volatility ISF.

Images are built on first use and cached outside the repository (docs/corpus.md), so the first
session on a machine pays the build cost and later ones reuse the images.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest` (unlike `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from tools.corpus import ensure_image  # noqa: E402  (needs the path above)

_VOLATILITY_CACHE = None


def pytest_configure(config):
    """Volatility caches symbol indexes under $XDG_CACHE_HOME; tests get their own unless one is set.

    This runs before any test module imports Volatility, which reads the variable at import time.
    """
    global _VOLATILITY_CACHE
    if "XDG_CACHE_HOME" not in os.environ:
        _VOLATILITY_CACHE = tempfile.mkdtemp(prefix="zen-tests-xdg-")
        os.environ["XDG_CACHE_HOME"] = _VOLATILITY_CACHE


def pytest_unconfigure(config):
    if _VOLATILITY_CACHE:
        shutil.rmtree(_VOLATILITY_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus():
    """``corpus(name, kind)`` -> the built image record (tools.corpus.Image); builds on first use."""
    return ensure_image


@pytest.fixture(scope="session")
def kernel_isf_dir() -> Path:
    """The folder to pass to ``vol -s``: it holds linux/<the guest kernel's ISF>.json.xz."""
    return REPO / "tests" / "data" / "isf"
