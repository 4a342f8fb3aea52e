"""Real third-party models, built from their packages' own code with random weights and a fixed seed.

    model_zoo.py --model timm-resnet18   timm's ResNet-18, CIFAR-10 style: 10 classes, a 1x3x32x32 input
    model_zoo.py --model yolov8n         ultralytics YOLOv8n from its bundled yolov8n.yaml, 1x3x64x64
    model_zoo.py --model llama-tiny      transformers' LlamaForCausalLM of a tiny LlamaConfig, 16 token ids

Run by the corpus harness under the ``torch-zoo-3.11`` venv (tools/corpus/interpreters.py), one
model per process.  Nothing is downloaded: every model is built from code and configuration that
its package ships, ultralytics runs with YOLO_OFFLINE and the Hugging Face hub with HF_HUB_OFFLINE,
and the configuration folders these packages write go to a fresh temporary folder (the guest sees
the host root read-only).

The process builds its model, puts it in eval mode, runs FORWARD_PASSES forward passes, and ends
with the ground truth (tools/corpus/deploy/_groundtruth.py), whose ``models`` section describes the
model.  Two models do not map a float tensor to a tensor, so their input specification says more
than schema 1's ``{shape, dtype, seed}`` (docs/corpus.md):

- ``values``: the input is ``torch.tensor(values, dtype=dtype).reshape(shape)`` (Llama's token ids),
  not ``torch.randn``;
- ``output_path``: the keys or indices that select the output tensor from what forward returns
  (``["logits"]`` for Llama's CausalLMOutputWithPast, ``[0]`` for YOLO's (predictions, raw) tuple).

For debugging, the script also runs on the host directly, without the harness:

    <zoo venv>/bin/python tools/corpus/deploy/model_zoo.py --model yolov8n [--out DIR] [--wait]

It then sets the harness's CPU limits itself, writes DIR/groundtruth/<pid>.json (DIR defaults to
a new temporary folder), prints a summary and exits (``--wait``: signals ready and sleeps instead).
"""

import argparse
import os
import sys
import tempfile
import time

MODELS = ("timm-resnet18", "yolov8n", "llama-tiny")
SEED = 0
INPUT_SEED = 1234
FORWARD_PASSES = 1  # besides the ground truth's own forward pass: the model has served once
SCENARIO = "model-zoo"
# The harness sets these for every torch process (tools/corpus/deployed.py); host runs set them too.
TORCH_ENV = {"DNNL_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}

# What the model-building code imports keeps alive until the process is killed.
KEEP = {}


def offline_environment(scratch):
    """No network, and every configuration or cache folder in ``scratch`` (the host root is read-only in the guest)."""
    folders = {
        "YOLO_CONFIG_DIR": "ultralytics",
        "HF_HOME": "huggingface",
        "MPLCONFIGDIR": "matplotlib",
        "XDG_CACHE_HOME": "cache",
        "XDG_CONFIG_HOME": "config",
    }
    for name, folder in folders.items():
        path = os.path.join(scratch, folder)
        os.makedirs(path, exist_ok=True)
        os.environ[name] = path
    os.environ["YOLO_OFFLINE"] = "true"  # ultralytics resolves two host names at import otherwise
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def build_timm_resnet18(torch):
    import timm

    torch.manual_seed(SEED)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return model, {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": INPUT_SEED}


def build_yolov8n(torch):
    from ultralytics import YOLO

    torch.manual_seed(SEED)
    yolo = YOLO("yolov8n.yaml", verbose=False)  # the YAML is bundled with ultralytics: no weights download
    KEEP["yolo"] = yolo  # the wrapper a deployment holds; its .model is the nn.Module tree
    return yolo.model, {"shape": [1, 3, 64, 64], "dtype": "float32", "seed": INPUT_SEED, "output_path": [0]}


def build_llama_tiny(torch):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    token_ids = [(37 * i + 11) % config.vocab_size for i in range(16)]
    spec = {"shape": [1, 16], "dtype": "int64", "seed": INPUT_SEED, "values": token_ids, "output_path": ["logits"]}
    return model, spec


BUILDERS = {"timm-resnet18": build_timm_resnet18, "yolov8n": build_yolov8n, "llama-tiny": build_llama_tiny}


def make_input(torch, spec):
    """The model's input as the ground truth's ``input`` describes it."""
    torch.manual_seed(spec["seed"])
    dtype = getattr(torch, spec["dtype"])
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=dtype).reshape(spec["shape"])
    return torch.randn(*spec["shape"], dtype=dtype)


def select_output(output, spec):
    for key in spec.get("output_path", ()):
        output = output[key]
    return output


def _model_output(model, spec):
    """Replaces _groundtruth._model_output: the input and output selection above (same no_grad forward)."""
    import torch

    sample = make_input(torch, spec)
    with torch.no_grad():
        return select_output(model(sample), spec)


def memory_summary():
    """Peak RSS of this process and the memory the system has left (sizes the guest; Linux /proc)."""
    found = {}
    for path, key in (("/proc/self/status", "VmHWM"), ("/proc/meminfo", "MemTotal"), ("/proc/meminfo", "MemAvailable")):
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith(key + ":"):
                        found[key] = int(line.split()[1]) // 1024
        except OSError:
            pass
    return ", ".join("%s %d MiB" % kv for kv in found.items())


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--out", help="host runs only: the output folder (default: a new temporary one)")
    parser.add_argument("--wait", action="store_true", help="host runs only: signal ready and sleep, as under the harness")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    under_harness = "ZEN_CORPUS_OUT" in os.environ
    if not under_harness:
        out = args.out or tempfile.mkdtemp(prefix="zen-zoo-%s-" % args.model)
        os.makedirs(os.path.join(out, "groundtruth"), exist_ok=True)
        os.environ["ZEN_CORPUS_OUT"] = out
        os.environ.setdefault("ZEN_CORPUS_DEPLOYMENT", "%s (host run)" % args.model)
    for name, value in TORCH_ENV.items():  # read when torch is imported, below
        os.environ.setdefault(name, value)
    offline_environment(tempfile.mkdtemp(prefix="zen-zoo-config-"))

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
            model(sample)
    del sample
    times["forward"] = time.monotonic() - mark

    mark = time.monotonic()
    _groundtruth._model_output = _model_output
    path = _groundtruth.write_ground_truth(SCENARIO, models=[(model, spec)])
    times["ground truth"] = time.monotonic() - mark
    print(
        "model-zoo %s: pid %d, %s; ground truth %.1f MB; %s"
        % (
            args.model,
            os.getpid(),
            ", ".join("%s %.1f s" % kv for kv in times.items()),
            os.path.getsize(path) / 1e6,
            memory_summary(),
        ),
        flush=True,
    )
    if under_harness or args.wait:
        _groundtruth.signal_ready_and_wait(path)
    print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
