"""The model families of the evaluation corpus: each family's base model and its derivatives.

    families.py --model yolov5-base        one model per process, by builder name
    families.py --list                     the builder names

Seven families (YOLOv5, YOLOv7, YOLOv8, ResNet, MobileNetV2, nanoGPT, Llama 2), each a base built from
its package's own code and derivatives customised the way practitioners do (derived/).  The builders
live in family_yolo.py and family_others.py (``BUILDERS = {name: fn(torch) -> (model, input_spec)}``),
merged here.  Run by the corpus harness under the ``torch-family-3.11`` venv
(tools/corpus/interpreters.py); everything else is as in model_zoo.py, whose helpers this script uses:
random weights with a fixed seed, nothing downloaded, eval mode, FORWARD_PASSES forward passes, then
the ground truth (scenario "model-family").

The input specification is model_zoo.py's ({shape, dtype, seed}, ``values``, ``output_path``) plus
``kwargs``: keyword arguments of the forward call (Llama's reference ``forward(tokens, start_pos)``
gets ``{"start_pos": 0}``).

For debugging, the script also runs on the host directly, without the harness:

    <family venv>/bin/python tools/corpus/deploy/families.py --model yolov7-c3 [--out DIR] [--wait]
"""

import argparse
import os
import sys
import tempfile
import time

import family_others
import family_yolo
import model_zoo

FORWARD_PASSES = 1  # besides the ground truth's own forward pass: the model has served once
SCENARIO = "model-family"
BUILDERS = dict(family_yolo.BUILDERS)
BUILDERS.update(family_others.BUILDERS)

# What the model-building code imports keeps alive until the process is killed.
KEEP = {}


def make_input(torch, spec):
    return model_zoo.make_input(torch, spec)


def select_output(output, spec):
    return model_zoo.select_output(output, spec)


def run_model(model, sample, spec):
    """One forward call as the specification says (``kwargs`` included)."""
    return model(sample, **spec.get("kwargs", {}))


def _model_output(model, spec):
    """Replaces _groundtruth._model_output: the input, forward arguments and output selection above."""
    import torch

    sample = make_input(torch, spec)
    with torch.no_grad():
        return select_output(run_model(model, sample, spec), spec)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(BUILDERS))
    parser.add_argument("--list", action="store_true", help="print the builder names and exit")
    parser.add_argument("--out", help="host runs only: the output folder (default: a new temporary one)")
    parser.add_argument("--wait", action="store_true", help="host runs only: signal ready and sleep, as under the harness")
    args = parser.parse_args(argv)
    if not args.list and not args.model:
        parser.error("--model is required")
    return args


def main(argv=None):
    args = _parse(argv)
    if args.list:
        print("\n".join(sorted(BUILDERS)))
        return 0
    under_harness = "ZEN_CORPUS_OUT" in os.environ
    if not under_harness:
        out = args.out or tempfile.mkdtemp(prefix="zen-family-%s-" % args.model)
        os.makedirs(os.path.join(out, "groundtruth"), exist_ok=True)
        os.environ["ZEN_CORPUS_OUT"] = out
        os.environ.setdefault("ZEN_CORPUS_DEPLOYMENT", "%s (host run)" % args.model)
    for name, value in model_zoo.TORCH_ENV.items():  # read when torch is imported, below
        os.environ.setdefault(name, value)
    scratch = tempfile.mkdtemp(prefix="zen-family-config-")
    model_zoo.offline_environment(scratch)
    # yolov5 creates its settings folder at import: ~/.config/Ultralytics, or /tmp/Ultralytics where
    # HOME is not writable (the guest's /tmp is the host's, read-only).
    os.environ["YOLOV5_CONFIG_DIR"] = os.path.join(scratch, "yolov5")

    times = {}
    started = time.monotonic()
    import torch

    import _torchvision_fix  # noqa: F401  (before anything imports torchvision)
    import _groundtruth

    times["import torch, torchvision"] = time.monotonic() - started
    mark = time.monotonic()
    model, spec = BUILDERS[args.model](torch)
    model.eval()
    KEEP["model"] = model
    times["import and build"] = time.monotonic() - mark

    mark = time.monotonic()
    sample = make_input(torch, spec)
    with torch.no_grad():
        for _ in range(FORWARD_PASSES):
            run_model(model, sample, spec)
    del sample
    times["forward"] = time.monotonic() - mark

    mark = time.monotonic()
    _groundtruth._model_output = _model_output
    path = _groundtruth.write_ground_truth(SCENARIO, models=[(model, spec)])
    times["ground truth"] = time.monotonic() - mark
    print(
        "model-family %s: pid %d, root %s.%s, %d parameters; %s; ground truth %.1f MB; %s"
        % (
            args.model,
            os.getpid(),
            type(model).__module__,
            type(model).__qualname__,
            sum(p.numel() for p in model.parameters()),
            ", ".join("%s %.1f s" % kv for kv in times.items()),
            os.path.getsize(path) / 1e6,
            model_zoo.memory_summary(),
        ),
        flush=True,
    )
    if under_harness or args.wait:
        _groundtruth.signal_ready_and_wait(path)
    print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
