"""Running the reuse step on corpus images, shared by tests/test_reuse.py and benchmarks/bench_reuse.py.

A bundle is written by ``linux.zen.patchgen --dump`` from a core image; ``python -m volatility3_zen.reuse``
then runs in the deployment's own interpreter (its venv has the base packages), with the deployments'
numerics settings, the corpus setup file (tests/reuse_setup.py) and, hidden, the packages only the
derivative brought, so that the interpreter stands for the base model's environment.  Reuse checks the
bundle's signature there, with the cryptography package those interpreters' pinned environments lack:
``reuse_pythonpath`` adds it (``crypto_path``).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional, Tuple

from tools.build_bml import ISF_DIR, vol_executable

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "tests" / "reuse_setup.py"
# The deployments' numerics settings (tools/corpus/deploy/model_zoo.py TORCH_ENV): the same kernels
# and one thread, so that outputs can be compared bit for bit.
TORCH_ENV = {"DNNL_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
             "MKL_CBWR": "COMPATIBLE"}


def model_of(image) -> Tuple[int, dict]:
    from tools.corpus import load_ground_truth

    pid, path = sorted(image.ground_truth.items())[0]
    truth = load_ground_truth(path)
    return pid, (truth.get("models") or truth.get("plain_models"))[0]


def write_bundle(image, out: Path) -> Tuple[Path, dict, float]:
    """(bundle path, the ground truth's model entry, seconds patchgen took), from a core or a LiME image."""
    pid, model = model_of(image)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as cache:
        source = ["-s", ISF_DIR, "-f", str(image.image)] if image.image else ["-f", str(image.cores[pid])]
        result = subprocess.run([vol_executable(), "-q", "-o", str(out)] + source + ["linux.zen.patchgen",
                                                 "--pid", str(pid), "--root", str(model["root_addr"]), "--dump"],
                                capture_output=True, text=True, env=dict(os.environ, XDG_CACHE_HOME=cache))
    if result.returncode != 0:
        raise RuntimeError(f"patchgen failed: {result.stderr[-2000:]}")
    return out / f"pid{pid}-{model['root_addr']:x}.zenpatch.zip", model, time.monotonic() - started


def interpreter(image) -> str:
    from tools.corpus import interpreters

    return str(interpreters.resolve(image.processes[0]["interpreter"]).executable)


def hidden_packages(bundle: Path) -> str:
    """Top-level packages that only the derivative brought: those of its added classes and of the
    modules the bundle creates, minus the base's own packages (from its fingerprint in bml/)."""
    from volatility3_zen.zenlib.bundle import format as bundle_format

    members = bundle_format.read_members(bundle)
    manifest = json.loads(members["manifest.json"])
    base = json.loads((REPO / "bml" / f"{manifest['base']['name']}.json").read_text())
    modules = [c["module"] for c in json.loads(members["classes.json"])["added"]]
    if "objects.json" in members:
        modules += json.loads(members["objects.json"])["local_modules"]
    return ",".join(sorted({m.partition(".")[0] for m in modules} - set(base["provenance"].get("model_packages", []))))


_CRYPTO_PATHS: Dict[str, str] = {}


def crypto_path(python: str) -> str:
    """A folder holding the cryptography package for ``python``'s CPython version ("" where ``python``
    imports it already): the deployments' interpreters stand for base environments, where the
    investigator installs cryptography to check signatures, but their environments are pinned without
    it.  Installed once per version, from the package registry, at the versions this environment has,
    into the corpus cache (beside its venvs); later runs reuse it."""
    if python not in _CRYPTO_PATHS:
        probe = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2]); import cryptography"],
                               capture_output=True, text=True)
        version = probe.stdout.split()[0]
        _CRYPTO_PATHS[python] = "" if probe.returncode == 0 else str(_install_crypto(version))
    return _CRYPTO_PATHS[python]


def _install_crypto(version: str) -> Path:
    from tools.corpus import cache

    pins = [f"{name}=={metadata.version(name)}" for name in ("cryptography", "cffi")]
    folder = cache.root() / "venvs" / f"crypto-cp{version.replace('.', '')}-{'-'.join(pins).replace('==', '')}"
    with cache.locked(folder):
        if not folder.exists():
            scratch = cache.scratch_dir(folder)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(scratch), "--python-version",
                            version, "--implementation", "cp", "--only-binary=:all:", *pins], check=True)
            cache.publish(scratch, folder)
    return folder


def reuse_pythonpath(python: str, *extra: str) -> str:
    """PYTHONPATH for volatility3_zen.reuse under ``python``: this checkout, ``extra``, cryptography."""
    return os.pathsep.join(path for path in (str(REPO), *extra, crypto_path(python)) if path)


def run_reuse(python: str, bundle: Path, *args: str, hide: str = "", timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=reuse_pythonpath(python), ZEN_REUSE_HIDE=hide, **TORCH_ENV)
    env.pop("PYTHONHOME", None)
    return subprocess.run([python, "-m", "volatility3_zen.reuse", str(bundle), "--setup", str(SETUP), *args],
                          capture_output=True, text=True, env=env, cwd=str(bundle.parent), timeout=timeout)


def output_sha(result: subprocess.CompletedProcess) -> Optional[str]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("output ")]
    return lines[-1].split()[-1] if lines else None
