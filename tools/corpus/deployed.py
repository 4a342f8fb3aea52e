"""How a deployment's processes are started: command line and environment, the same in guest and host.

Processes get a clean environment (nothing of the caller's leaks into an image).  Torch processes
also get the CPU-feature limits measured in docs/corpus.md: under QEMU's emulated CPU, PyTorch's AVX2
kernels are 5-16x slower than its SSE ones, and host cores use the same settings so outputs agree.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from .catalog import Deployment, Process
from .interpreters import Interpreter

DEPLOY_DIR = Path(__file__).resolve().parent / "deploy"
WRITER = DEPLOY_DIR / "_groundtruth.py"
OUT_ENV = "ZEN_CORPUS_OUT"  # same names as in deploy/_groundtruth.py
DEPLOYMENT_ENV = "ZEN_CORPUS_DEPLOYMENT"

BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",  # the guest sees the host read-only; keep the host tree clean too
    "PYTHONHASHSEED": "0",
}
TORCH_ENV = {"DNNL_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}


@dataclass(frozen=True)
class Planned:
    """One process of a deployment, bound to its resolved interpreter."""

    index: int
    process: Process
    interpreter: Interpreter

    @property
    def script(self) -> Path:
        return DEPLOY_DIR / self.process.script

    def command(self) -> List[str]:
        return [str(self.interpreter.executable), *self.interpreter.flags, str(self.script), *self.process.args]

    def static_environment(self) -> Dict[str, str]:
        """The environment without its paths (those differ between guest and host): part of the key."""
        return dict(BASE_ENV, **(TORCH_ENV if self.interpreter.torch else {}))

    def environment(self, deployment: Deployment, out_dir: str, tmp_dir: str) -> Dict[str, str]:
        env = dict(self.static_environment(), TMPDIR=tmp_dir, **{OUT_ENV: out_dir, DEPLOYMENT_ENV: deployment.name})
        env.update(self.interpreter.env)  # a stripped interpreter's LD_LIBRARY_PATH and PYTHONHOME
        return env

    def record(self, pid: int) -> dict:
        """This process's entry in build.json."""
        return {
            "pid": pid,
            "index": self.index,
            "script": self.process.script,
            "args": list(self.process.args),
            "interpreter": self.interpreter.ident,
            "executable": str(self.interpreter.executable),
            "process_name": self.interpreter.process_name,
            "python_version": self.interpreter.version.split()[0],
        }
