"""The interpreters a deployed process can run under, and the torch venv the harness owns.

Identifiers used by the catalogue:
- "3.7" .. "3.13": pyenv's CPython of that minor version (built --enable-shared, with DWARF);
- "debian-3.11": Debian's /usr/bin/python3.11 (static libpython, non-PIE);
- "torch-3.11": a venv of pyenv's 3.11 with torch and numpy, created once in the cache.

Plain interpreters run with ``-S``: their site-packages hold whatever this machine happens to have
installed (and .pth files that import things at start-up), which would make images depend on the
machine.  The torch venv needs its site-packages, and owns all of them.
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from . import cache
from .errors import BuildError

DEBIAN_PYTHON = Path("/usr/bin/python3.11")
TORCH_BASE = "3.11"
TORCH_REQUIREMENTS = ("torch==2.13.0", "numpy==2.4.6")


@dataclass(frozen=True)
class Interpreter:
    ident: str
    executable: Path  # the path exec'd: its basename becomes the process name (comm)
    version: str  # sys.version of the interpreter, part of the cache key
    flags: Tuple[str, ...]  # interpreter options placed before the script
    torch: bool = False
    requirements: Tuple[str, ...] = ()

    @property
    def process_name(self) -> str:
        return self.executable.name[:15]  # the kernel keeps 15 characters of comm

    def identity(self) -> dict:
        """What of this interpreter determines an image (no paths: caches stay portable)."""
        return {"ident": self.ident, "version": self.version, "requirements": list(self.requirements)}


class InterpreterMissing(BuildError):
    pass


def pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _pyenv_python(minor: str) -> Path:
    """bin/python3.X of the newest pyenv install of that minor version."""
    versions = pyenv_root() / "versions"
    candidates = versions.glob(minor + ".*") if versions.is_dir() else ()
    patches = {int(d.name.split(".")[2]): d for d in candidates if re.fullmatch(r"\d+\.\d+\.\d+", d.name)}
    if not patches:
        raise InterpreterMissing("no pyenv CPython %s under %s (pyenv install %s.N)" % (minor, versions, minor))
    return patches[max(patches)] / "bin" / ("python" + minor)


def _sys_version(executable: Path) -> str:
    return subprocess.run(
        [str(executable), "-S", "-c", "import sys; print(sys.version)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def resolve(ident: str, create: bool = True) -> Interpreter:
    """The interpreter for a catalogue identifier; creates the torch venv if needed and allowed."""
    if ident == "debian-3.11":
        if not DEBIAN_PYTHON.exists():
            raise InterpreterMissing("%s is missing (apt-get install python3.11)" % DEBIAN_PYTHON)
        return Interpreter(ident, DEBIAN_PYTHON, _sys_version(DEBIAN_PYTHON), ("-S",))
    if ident == "torch-" + TORCH_BASE:
        return _torch_interpreter(create)
    if re.fullmatch(r"3\.\d+", ident):
        executable = _pyenv_python(ident)
        return Interpreter(ident, executable, _sys_version(executable), ("-S",))
    raise InterpreterMissing("unknown interpreter %r" % ident)


def _torch_interpreter(create: bool) -> Interpreter:
    base = _pyenv_python(TORCH_BASE)
    version = _sys_version(base)
    venv = torch_venv_path(version)
    if create and not venv.exists():
        with cache.locked(venv):  # two images may need it at once
            if not venv.exists():
                _create_torch_venv(base, venv)
    return Interpreter(
        "torch-" + TORCH_BASE,
        venv / "bin" / base.name,
        version,
        (),
        torch=True,
        requirements=TORCH_REQUIREMENTS,
    )


def torch_venv_path(base_version: str) -> Path:
    key = cache.digest({"base": base_version, "requirements": TORCH_REQUIREMENTS})[:12]
    return cache.root() / "venvs" / ("torch-%s-%s" % (TORCH_BASE, key))


def _create_torch_venv(base: Path, venv: Path) -> None:
    """python3.11 -m venv + pip install, built beside the final path and renamed into place.

    A constraints file pins torch: any unpinned torch requirement would pull GBs of CUDA wheels.
    """
    tmp = venv.with_name(venv.name + ".tmp-%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    print("corpus: creating torch venv %s" % venv, flush=True)
    subprocess.run([str(base), "-m", "venv", str(tmp)], check=True)
    constraints = tmp / "constraints.txt"
    constraints.write_text("".join(r + "\n" for r in TORCH_REQUIREMENTS))
    pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet", "--constraint", str(constraints)]
    subprocess.run(pip + list(TORCH_REQUIREMENTS), check=True)
    os.rename(tmp, venv)

