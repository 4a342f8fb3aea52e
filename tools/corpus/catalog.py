"""The catalogue of deployments: which processes run, under which interpreters, in which image kinds.

A deployment is one or more processes (a script under tools/corpus/deploy/ run by one interpreter)
that run at the same time and are captured together: in one LiME image of a QEMU guest (kind
``lime``) or as one gcore core per process on the host (kind ``core``).  Every field here is part of
the cache key, so changing an entry rebuilds its images.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

from .errors import BuildError

KINDS = ("lime", "core")
PLAIN_VERSIONS = ("3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")


@dataclass(frozen=True)
class Process:
    script: str  # file name under tools/corpus/deploy/
    interpreter: str  # "3.6".."3.13" (pyenv), "debian-3.11", "stripped-3.11", "torch-3.11" or "torch-zoo-3.11" (interpreters.py)
    args: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Deployment:
    name: str
    description: str
    processes: Tuple[Process, ...]
    kinds: Tuple[str, ...]  # the image kinds this deployment is built as; the first is the default
    guest_memory_mib: int = 512  # LiME only: every MiB costs LiME write time, too few starves torch
    guest_cpus: int = 1  # LiME only
    ready_timeout_s: int = 900  # until every process has written its ground truth


def _plain(interpreter: str, *args: str) -> Process:
    return Process("plain_program.py", interpreter, tuple(args))


def _entries():
    yield from (
        Deployment(
            "plain-" + v,
            "plain_program.py under pyenv CPython " + v,
            (_plain(v),),
            ("core",),
        )
        for v in PLAIN_VERSIONS
    )
    yield Deployment(
        "plain-multi",
        "plain_program.py under every pyenv CPython 3.7-3.13 at once, in one guest",
        tuple(_plain(v) for v in PLAIN_VERSIONS),
        ("lime",),
    )
    for v in ("3.12", "3.13"):
        yield Deployment(
            "plain-%s-traced" % v,
            "plain_program.py under CPython %s with sys.settrace and sys.monitoring active" % v,
            (_plain(v, "--trace"),),
            ("core",),
        )
    yield Deployment(
        "plain-debian-3.11",
        "plain_program.py under Debian's /usr/bin/python3.11 (static libpython, non-PIE)",
        (_plain("debian-3.11"),),
        ("core", "lime"),
    )
    yield Deployment(
        "plain-stripped-3.11",
        "plain_program.py under strip --strip-all copies of pyenv's python3.11 and libpython3.11.so.1.0",
        (_plain("stripped-3.11"),),
        ("core",),
    )
    yield Deployment(
        "plain-3.6",
        "plain_program.py under pyenv CPython 3.6, a version the plugins do not support",
        (_plain("3.6"),),
        ("core",),
    )
    yield Deployment(
        "torch-custom-3.11",
        "torch_custom.py: a custom nn.Module tree with every tensor oddity (the reference LiME image)",
        (Process("torch_custom.py", "torch-3.11"),),
        ("lime", "core"),
    )

    yield from _zoo_entries()


# model_zoo.py --model NAME -> (deployment name, description, guest MiB).  The guest memory is measured
# (docs/corpus.md): these processes reach 390-430 MB RSS on the host, which 512 MiB does not hold.
ZOO_MODELS = (
    ("timm-resnet18", "timm-resnet18-3.11", "timm's resnet18, 10 classes, 1x3x32x32 input", 768),
    ("yolov8n", "yolov8n-3.11", "ultralytics YOLOv8n built from its bundled yolov8n.yaml, 1x3x64x64 input", 768),
    ("llama-tiny", "llama-tiny-3.11", "transformers LlamaForCausalLM, hidden 64, 2 layers, 4 heads, vocab 256", 768),
)


def _zoo_entries():
    for model, name, description, memory in ZOO_MODELS:
        yield Deployment(
            name,
            "model_zoo.py: " + description,
            (Process("model_zoo.py", "torch-zoo-3.11", ("--model", model)),),
            ("lime", "core"),
            guest_memory_mib=memory,
        )


CATALOGUE: Dict[str, Deployment] = {d.name: d for d in _entries()}


def get(name: str) -> Deployment:
    if name not in CATALOGUE:
        raise BuildError("unknown deployment %r; `python -m tools.corpus list` shows the catalogue" % name)
    return CATALOGUE[name]
