"""Shared fixtures: the memory-image corpus (tools/corpus) and the kernel's Volatility ISF.

Images are built on first use and cached outside the repository (docs/corpus.md), so the first
session on a machine pays the build cost and later ones reuse the images.
"""

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

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


@pytest.fixture(scope="session", autouse=True)
def signing_key(tmp_path_factory):
    """The suite's throwaway signing key, made once per session: $ZEN_CONFIG_DIR points at its folder
    for the whole session (and every command a test runs), so every bundle ``patchgen --dump`` writes
    is signed with it and every reuse run trusts it, as on an investigator's machine after
    ``python -m volatility3_zen.keys generate`` (docs/reuse.md).  Yields (private key file, public key file)."""
    from volatility3_zen.zenlib.bundle import signing

    folder = tmp_path_factory.mktemp("zen-config")
    saved = os.environ.get(signing.CONFIG_ENV)
    os.environ[signing.CONFIG_ENV] = str(folder)
    private, public, _ = signing.generate(folder)
    yield private, public
    if saved is None:
        os.environ.pop(signing.CONFIG_ENV, None)
    else:
        os.environ[signing.CONFIG_ENV] = saved


@pytest.fixture(scope="session")
def corpus():
    """``corpus(name, kind)`` -> the built image record (tools.corpus.Image); builds on first use."""
    return ensure_image


@pytest.fixture(scope="session")
def kernel_isf_dir() -> Path:
    """The folder to pass to ``vol -s``: it holds linux/<the guest kernel's ISF>.json.xz."""
    return REPO / "tests" / "data" / "isf"


@pytest.fixture(scope="session")
def patchgen_dump(corpus, tmp_path_factory):
    """``patchgen_dump(deployment)`` -> ``DumpedRun``: one ``linux.zen.patchgen --dump`` of the deployment's
    first model root per test session, shared by the report and the provenance tests (a run takes
    tens of seconds)."""
    import zen_testlib
    from tools.corpus import load_ground_truth

    done = {}

    def run(deployment):
        if deployment not in done:
            image = corpus(deployment, "core")
            pid, path = sorted(image.ground_truth.items())[0]
            truth = load_ground_truth(path)
            root = (truth.get("models") or truth.get("plain_models"))[0]["root_addr"]
            out = tmp_path_factory.mktemp(deployment)
            args = ["-o", str(out), "-f", str(image.cores[pid]), "linux.zen.patchgen", "--pid", str(pid),
                    "--root", str(root), "--dump"]
            result = zen_testlib.run_vol(args)
            assert result.returncode == 0, result.stderr[-2000:]
            done[deployment] = DumpedRun(pid, root, out, image.cores[pid], zen_testlib.vol_command() + args,
                                         result.stderr)
        return done[deployment]

    return run


@dataclass
class DumpedRun:
    """One ``linux.zen.patchgen --dump`` run: what it wrote, where, and how it was called."""

    pid: int
    root: int
    out: Path  # the output folder: the bundle and the report
    core: Path  # the image
    argv: List[str]  # the command line
    stderr: str
