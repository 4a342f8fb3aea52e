"""Corpus plumbing shared by the practice deployments (deploy/practice/<model>/serve.py).

A practice deployment is written the way a practitioner writes a serving script; only two calls in it
belong to the corpus, and they come from here:

    import _serve                      # after sys.path.append(<deploy/practice>)
    _serve.prepare()                   # first thing: offline settings, scratch config folders, the
                                       # registry torchvision's operator fix (before torchvision loads)
    ...                                # the deployment builds its model, any way it likes
    _serve.serve(model, spec, custom)  # eval, one forward pass, ground truth with custom_code, ready

``custom`` is the deployment's own statement of what it customised, written by its author:
``{"added_classes": [...], "changed_classes": [...], "functions": [...]}`` with "module.qualname"
names as this process sees them (``__main__.Gate``, ``common.Stem``, ``timm.models.resnet.BasicBlock``).
It goes into the ground truth's ``custom_code`` section with the deployment's shape and base, and
tests compare linux.zen.patchgen's added and changed classes with it.

``prepare(numerics=False)`` removes the harness's numerics variables (OMP_NUM_THREADS,
ATEN_CPU_CAPABILITY, DNNL_MAX_CPU_ISA, MKL_CBWR) from the environment before torch is imported: a
deployment that sets none of them, as real ones rarely do.
"""

import json
import os
import sys
import tempfile
import time

_DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _DEPLOY not in sys.path:
    sys.path.append(_DEPLOY)  # the corpus's _groundtruth, _torchvision_fix and model_zoo

import model_zoo  # noqa: E402

SCENARIO = "model-practice"
SECTION = "custom_code"
KEEP = {}


def prepare(numerics=True):
    if "ZEN_CORPUS_OUT" not in os.environ:  # a host run without the harness
        out = tempfile.mkdtemp(prefix="zen-practice-")
        os.makedirs(os.path.join(out, "groundtruth"), exist_ok=True)
        os.environ["ZEN_CORPUS_OUT"] = out
        os.environ.setdefault("ZEN_CORPUS_DEPLOYMENT", "practice (host run)")
        KEEP["standalone"] = True
        if numerics:
            for name, value in model_zoo.TORCH_ENV.items():
                os.environ.setdefault(name, value)
    if not numerics:
        for name in model_zoo.TORCH_ENV:
            os.environ.pop(name, None)
    scratch = tempfile.mkdtemp(prefix="zen-practice-config-")
    model_zoo.offline_environment(scratch)
    os.environ["YOLOV5_CONFIG_DIR"] = os.path.join(scratch, "yolov5")
    import _torchvision_fix  # noqa: F401  (before anything imports torchvision)
    return scratch


def _append_section(path, name, value):
    text = ",%s:%s}" % (json.dumps(name), json.dumps(value, separators=(",", ":")))
    with open(path, "r+b") as out:
        out.seek(-1, os.SEEK_END)
        if out.read(1) != b"}":
            raise ValueError("%s does not end in a JSON object" % path)
        out.seek(-1, os.SEEK_END)
        out.write(text.encode("ascii"))


def _model_output(model, spec):
    import torch

    sample = model_zoo.make_input(torch, spec)
    with torch.no_grad():
        return model_zoo.select_output(model(sample, **spec.get("kwargs", {})), spec)


def serve(model, spec, custom, wait=None):
    """Eval mode, one forward pass (the model has served), the ground truth, then ready and sleep."""
    import torch

    import _groundtruth

    model.eval()
    KEEP["model"] = model
    started = time.monotonic()
    _model_output(model, spec)
    _groundtruth._model_output = _model_output
    path = _groundtruth.write_ground_truth(SCENARIO, models=[(model, spec)])
    main = sys.modules["__main__"]
    section = {
        "deployment": os.environ.get("ZEN_CORPUS_DEPLOYMENT"),
        "script": os.path.abspath(main.__file__),
        "shape": custom.get("shape"),
        "base": custom.get("base"),
        "added_classes": sorted(custom.get("added_classes", ())),
        "changed_classes": sorted(custom.get("changed_classes", ())),
        "functions": sorted(custom.get("functions", ())),
        "numerics": {name: os.environ.get(name) for name in model_zoo.TORCH_ENV},
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    output = _model_output(model, spec).detach().float().contiguous()
    # The output's values (not only its sha256): a rebuild that differs can say by how much.
    section["output"] = {"shape": list(output.shape), "values_hex": [float(v).hex() for v in output.flatten().tolist()]}
    _append_section(path, SECTION, section)
    print("practice %s: pid %d, root %s.%s, %d parameters, forward+truth %.1f s, %s"
          % (section["deployment"], os.getpid(), type(model).__module__, type(model).__qualname__,
             sum(p.numel() for p in model.parameters()), time.monotonic() - started, model_zoo.memory_summary()),
          flush=True)
    if wait is None:
        wait = not KEEP.get("standalone") or "--wait" in sys.argv
    if wait:
        _groundtruth.signal_ready_and_wait(path)
    print("wrote %s" % path)
