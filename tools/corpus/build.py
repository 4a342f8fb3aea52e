"""ensure_image: the cached image of a deployment, built on first use.

The cache key (``image_inputs``) covers everything that determines an image: the catalogue entry,
the deployment scripts and the ground-truth writer (by content), the interpreters' versions and
torch requirements, the processes' environment, the kind's own inputs (guest kernel, LiME, QEMU
and the guest init for ``lime``; gdb and the coredump filter for ``core``) and HARNESS_VERSION,
which is bumped whenever the harness changes what it produces.
"""

import dataclasses
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from . import cache, catalog, cores, guest, interpreters, system
from .deployed import DEPLOY_DIR, WRITER, Planned
from .errors import BuildError

HARNESS_VERSION = 1
BUILDERS = {"lime": guest.build, "core": cores.build}


@dataclass(frozen=True)
class Image:
    """A built image as tests use it; ``processes`` holds build.json's per-process records."""

    name: str
    kind: str
    directory: Path
    image: Optional[Path]  # image.lime (kind lime)
    cores: Dict[int, Path]  # pid -> <pid>.core (kind core)
    ground_truth: Dict[int, Path]  # pid -> groundtruth/<pid>.json
    build_seconds: float
    size_bytes: int  # of image.lime or of all cores
    processes: List[dict]

    @classmethod
    def load(cls, directory: Path) -> "Image":
        record = json.loads((directory / cache.BUILD_RECORD).read_text())
        pids = record["pids"]
        return cls(
            name=record["name"],
            kind=record["kind"],
            directory=directory,
            image=directory / "image.lime" if record["kind"] == "lime" else None,
            cores={pid: directory / ("%d.core" % pid) for pid in pids} if record["kind"] == "core" else {},
            ground_truth={pid: directory / "groundtruth" / ("%d.json" % pid) for pid in pids},
            build_seconds=record["build_seconds"],
            size_bytes=record["size_bytes"],
            processes=record["processes"],
        )


def plan(deployment: catalog.Deployment, create: bool = True) -> List[Planned]:
    """Binds each process to its interpreter (creating the torch venv when ``create``)."""
    return [Planned(i, p, interpreters.resolve(p.interpreter, create)) for i, p in enumerate(deployment.processes)]


def image_inputs(deployment: catalog.Deployment, kind: str, planned: List[Planned]) -> dict:
    scripts = sorted({p.script for p in planned} | {WRITER})
    inputs = {
        "harness_version": HARNESS_VERSION,
        "kind": kind,
        "deployment": dataclasses.asdict(deployment),
        "files": {path.name: cache.file_sha256(path) for path in scripts},
        "interpreters": [p.interpreter.identity() for p in planned],
        "environments": [p.static_environment() for p in planned],
        "kind_inputs": _kind_inputs(kind),
    }
    folders = folder_files(p.script for p in planned)
    if folders:  # only scripts in a folder of their own have this key: the other images keep theirs
        inputs["folder_files"] = folders
    return inputs


def folder_files(scripts) -> Dict[str, str]:
    """A script in a sub-folder of deploy/ (practice/<model>/serve.py) runs with the files beside it
    (local modules, packages, files it loads by path) and the shared helpers of the folders above it:
    every one of them, by path under deploy/, with its sha256."""
    out: Dict[str, str] = {}
    for script in scripts:
        relative = script.relative_to(DEPLOY_DIR)
        if len(relative.parts) < 2:
            continue
        for path in sorted(script.parent.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out[str(path.relative_to(DEPLOY_DIR))] = cache.file_sha256(path)
        for folder in list(relative.parents)[1:-1]:  # the folders between deploy/ and the script's own
            for path in sorted((DEPLOY_DIR / folder).glob("*.py")):
                out[str(path.relative_to(DEPLOY_DIR))] = cache.file_sha256(path)
    return out


def _kind_inputs(kind: str) -> dict:
    if kind == "lime":
        return {
            "kernel": "%s=%s" % (system.KERNEL_PACKAGE, system.KERNEL_VERSION),
            "packages": {p: system.APT_PINS[p] for p in system.PACKAGES_FOR_KIND["lime"]},
            "guest_init": cache.file_sha256(guest.INIT_SCRIPT),
            "kernel_args": guest.KERNEL_ARGS,
        }
    packages = {p: system.APT_PINS[p] for p in system.PACKAGES_FOR_KIND["core"]}
    return {"packages": packages, "filter": cores.COREDUMP_FILTER}


def _check_kind(deployment: catalog.Deployment, kind: Optional[str]) -> str:
    kind = kind or deployment.kinds[0]
    if kind not in deployment.kinds:
        raise BuildError("%s is built as %s, not %s" % (deployment.name, "/".join(deployment.kinds), kind))
    return kind


def cached_dir(name: str, kind: Optional[str] = None) -> Path:
    """The directory the image has or will have, without building anything (not even the torch venv)."""
    deployment = catalog.get(name)
    kind = _check_kind(deployment, kind)
    planned = plan(deployment, create=False)
    return cache.image_dir(name, kind, image_inputs(deployment, kind, planned))


def ensure_image(name: str, kind: Optional[str] = None, force: bool = False) -> Image:
    """The image of deployment ``name`` as ``kind`` (default: its first kind), built if not cached."""
    deployment = catalog.get(name)
    kind = _check_kind(deployment, kind)
    planned = plan(deployment, create=False)
    inputs = image_inputs(deployment, kind, planned)
    directory = cache.image_dir(name, kind, inputs)
    if cache.is_complete(directory) and not force:
        return Image.load(directory)
    with cache.locked(directory):
        if cache.is_complete(directory) and not force:  # built meanwhile by another process
            return Image.load(directory)
        system.ensure_for_kind(kind)
        _build(deployment, kind, plan(deployment, create=True), inputs, directory)
    return Image.load(directory)


def _build(deployment: catalog.Deployment, kind: str, planned: List[Planned], inputs: dict, directory: Path) -> None:
    tmp = cache.scratch_dir(directory)
    (tmp / "groundtruth").mkdir()
    (tmp / "logs").mkdir()
    started = time.monotonic()
    try:
        processes = BUILDERS[kind](deployment, planned, tmp)
        _check_outputs(kind, tmp, processes)
    except BaseException as error:
        failed = cache.keep_failed(tmp, directory)
        if isinstance(error, BuildError):
            error.args = ("%s (logs kept in %s)" % (error, failed),)
        raise
    record = {
        "name": deployment.name,
        "kind": kind,
        "inputs": inputs,
        "build_seconds": round(time.monotonic() - started, 1),
        "size_bytes": sum(p.stat().st_size for p in _image_files(kind, tmp, processes)),
        "pids": [p["pid"] for p in processes],
        "processes": processes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / cache.BUILD_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    for path in _image_files(kind, tmp, processes):
        _dig_holes(path)
        path.chmod(0o444)  # images are never modified once built
    cache.publish(tmp, directory)


def _dig_holes(path: Path) -> None:
    """Zero pages (a guest's free memory, address space an allocator reserved) take no disk: the same
    bytes, stored sparse (measured: a nano-gpt core 2.16 -> 0.95 GB, the cache 60 -> 49 GB).  Where
    the file system or util-linux cannot, the file stays as it is."""
    try:
        subprocess.run(["fallocate", "--dig-holes", str(path)], check=False, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        pass


def _image_files(kind: str, directory: Path, processes: List[dict]) -> List[Path]:
    if kind == "lime":
        return [directory / "image.lime"]
    return [directory / ("%d.core" % p["pid"]) for p in processes]


def _check_outputs(kind: str, directory: Path, processes: List[dict]) -> None:
    """Every image file is there and non-empty, every process wrote its ground truth."""
    expected = _image_files(kind, directory, processes)
    expected += [directory / "groundtruth" / ("%d.json" % p["pid"]) for p in processes]
    missing = [str(path.relative_to(directory)) for path in expected if not path.is_file() or not path.stat().st_size]
    if missing:
        raise BuildError("build produced no (or empty) %s" % ", ".join(missing))
