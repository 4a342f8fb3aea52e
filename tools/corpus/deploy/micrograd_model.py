"""A plain-Python model from a real open-source library: micrograd 0.1.0 (Karpathy's scalar autograd).

    micrograd_model.py --model base         micrograd.nn.MLP(3, [8, 8, 1]), the library's own classes
    micrograd_model.py --model derivative   derived.micro.nn.MLPWithNorm(3, [8, 8, 1]): a practitioner's
                                            customisation of micrograd (tools/corpus/deploy/derived/micro/)

Run by the corpus harness under a ``micrograd-3.X`` venv (tools/corpus/interpreters.py): pyenv's
CPython 3.X with ``micrograd==0.1.0``, no torch, nothing else.  The script runs unchanged under
CPython 3.6-3.13.

The process seeds ``random`` with SEED, builds the model (micrograd draws its weights from
``random.uniform``), runs one forward pass on INPUT, one training step (squared error against
TARGET, ``loss.backward()``, a step of the script's own ``SGD`` with LEARNING_RATE; the gradients
are left in place) and a second forward pass, whose output graph it keeps alive like a model that
has just served.  Then it writes the ground truth (tools/corpus/deploy/_groundtruth.py), with:

- ``instances``: every module of the model with its simple attributes (``nonlin``, ``activation``,
  ``mask``, ...), and every parameter ``Value`` with ``data``, ``grad`` and ``_op``;
- the extra section ``plain_models`` (docs/corpus.md), appended to the document before the process
  signals ready: which object is the model root (address and class), its modules and parameters by
  address, the input, and the forward output as ``float.hex()``.

A plain-Python model has no framework tree to be found by, so the root address is what a test hands
to the plugins (``--root``).

For debugging, the script also runs on the host directly, without the harness:

    <micrograd venv>/bin/python tools/corpus/deploy/micrograd_model.py --model base [--out DIR] [--wait]

It then writes DIR/groundtruth/<pid>.json (DIR defaults to a new temporary folder), prints a summary
and exits (``--wait``: signals ready and sleeps instead, like under the harness).
"""

import json
import os
import random
import sys
import tempfile

import _groundtruth

SCENARIO = "micrograd"
FAMILY = "micrograd"
MODELS = ("base", "derivative")
SEED = 0
NIN, NOUTS = 3, [8, 8, 1]
INPUT = (0.5, -1.25, 2.0)
TARGET = 1.0
LEARNING_RATE = 0.05
EXTRA_SECTION = "plain_models"

# Module attributes that hold child modules (micrograd's and the derivative's), in walk order.
CHILD_ATTRIBUTES = ("layers", "norms", "neurons")
# Simple attributes the ground truth reads per class name (read one by one: never through vars()).
SIMPLE_ATTRIBUTES = {
    "Neuron": ("nonlin",),
    "LeakyNeuron": ("nonlin", "activation", "slope"),
    "ResidualLayer": ("residual", "keep", "mask"),
    "RMSNorm": ("eps",),
}
VALUE_ATTRIBUTES = ("data", "grad", "_op")

# What stays alive until the process is killed: the model, the training step's graph, the last output.
KEEP = {}


def usage(message):
    sys.stderr.write("micrograd_model.py: %s\n" % message)
    sys.stderr.write("usage: micrograd_model.py --model base|derivative [--out DIR] [--wait]\n")
    sys.exit(2)


def parse(argv):
    options = {"model": None, "out": None, "wait": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--model", "--out"):
            if not args:
                usage("%s needs a value" % arg)
            options[arg[2:]] = args.pop(0)
        elif arg == "--wait":
            options["wait"] = True
        else:
            usage("unknown argument %r" % arg)
    if options["model"] not in MODELS:
        usage("--model must be one of %s" % ", ".join(MODELS))
    return options


def build(kind):
    """The model, its weights drawn from random after random.seed(SEED)."""
    random.seed(SEED)
    if kind == "base":
        from micrograd.nn import MLP

        return MLP(NIN, list(NOUTS))
    from derived.micro.nn import MLPWithNorm

    return MLPWithNorm(NIN, list(NOUTS))


class SGD:
    """Plain gradient descent: micrograd has no optimiser, so the training script brings its own."""

    def __init__(self, parameters, learning_rate):
        self.parameters = list(parameters)
        self.learning_rate = learning_rate

    def step(self):
        for p in self.parameters:
            p.data -= self.learning_rate * p.grad


def train_and_serve(model):
    """One forward pass, one SGD step on the squared error, one more forward pass (its output is kept)."""
    optimiser = SGD(model.parameters(), LEARNING_RATE)
    first = model(list(INPUT))
    loss = (first - TARGET) ** 2
    model.zero_grad()
    loss.backward()
    optimiser.step()
    output = model(list(INPUT))
    KEEP.update(model=model, optimiser=optimiser, loss=loss, output=output)
    return loss, output


def class_name(obj):
    cls = type(obj)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def walk(module, path=""):
    """(path, module) for the model and every module below it, parents first ("layers.0.neurons.3")."""
    yield path, module
    for attribute in CHILD_ATTRIBUTES:
        children = getattr(module, attribute, None)
        if not isinstance(children, list):
            continue
        for index, child in enumerate(children):
            child_path = "%s.%d" % (attribute, index)
            for found in walk(child, path + "." + child_path if path else child_path):
                yield found


def instances(model):
    """(object, attribute names) pairs for _groundtruth's ``instances`` section."""
    pairs = []
    for _, module in walk(model):
        names = SIMPLE_ATTRIBUTES.get(type(module).__name__)
        if names:
            pairs.append((module, names))
    pairs.extend((p, VALUE_ATTRIBUTES) for p in model.parameters())
    return pairs


def describe(kind, model, loss, output):
    """The ``plain_models`` entry of this model (docs/corpus.md)."""
    return {
        "family": FAMILY,
        "role": kind,
        "root_addr": id(model),
        "class": class_name(model),
        "modules": [[path, class_name(m), id(m)] for path, m in walk(model)],
        "parameters": [id(p) for p in model.parameters()],
        "input": [float(v).hex() for v in INPUT],
        "output": float(output.data).hex(),
        "output_addr": id(output),
        "training": {
            "target": float(TARGET).hex(),
            "learning_rate": float(LEARNING_RATE).hex(),
            "loss": float(loss.data).hex(),
        },
    }


def append_section(path, name, value):
    """Appends ``"name": value`` to the ground-truth document at ``path`` (before "ready" is signalled).

    The writer streams compact JSON ending in "}"; the section goes in front of that brace.  Nothing
    is parsed again, so the process allocates no more than this one section's text.
    """
    text = ",%s:%s}" % (json.dumps(name), json.dumps(value, separators=(",", ":")))
    with open(path, "r+b") as out:
        out.seek(-1, os.SEEK_END)
        if out.read(1) != b"}":
            raise ValueError("%s does not end in a JSON object" % path)
        out.seek(-1, os.SEEK_END)
        out.write(text.encode("ascii"))


def main(argv):
    options = parse(argv)
    standalone = _groundtruth.OUT_ENV not in os.environ
    if standalone:
        out = options["out"] or tempfile.mkdtemp(prefix="zen-micrograd-")
        os.makedirs(os.path.join(out, "groundtruth"), exist_ok=True)
        os.environ[_groundtruth.OUT_ENV] = out
    model = build(options["model"])
    loss, output = train_and_serve(model)
    entry = describe(options["model"], model, loss, output)
    path = _groundtruth.write_ground_truth(SCENARIO, instances=instances(model))
    append_section(path, EXTRA_SECTION, [entry])
    print(
        "micrograd_model: %s %s at 0x%x, %d parameters, output %s (%r), ground truth %d bytes (%s)"
        % (options["model"], entry["class"], entry["root_addr"], len(entry["parameters"]), entry["output"],
           output.data, os.path.getsize(path), path)
    )
    sys.stdout.flush()
    if standalone and not options["wait"]:
        return
    _groundtruth.signal_ready_and_wait(path)


if __name__ == "__main__":
    main(sys.argv[1:])
