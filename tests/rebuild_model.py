"""Run by a torch interpreter: build a fresh copy of a deployed architecture, load recovered weights
from a safetensors file written by linux.zen.model, run the fixed input, print the output's sha256.

usage: rebuild_model.py DEPLOY_SCRIPT BUILDER_EXPR WEIGHTS.safetensors INPUT_JSON
"""

import hashlib
import importlib.util
import json
import os
import struct
import sys
import tempfile

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
          "C64": torch.complex64}


def load_safetensors(path):
    """A minimal reader (the torch venv need not have the safetensors package)."""
    data = open(path, "rb").read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    base = 8 + length
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        raw = bytearray(data[base + start: base + end])
        tensors[name] = torch.frombuffer(raw, dtype=DTYPES[spec["dtype"]]).reshape(spec["shape"]) if raw else \
            torch.empty(spec["shape"], dtype=DTYPES[spec["dtype"]])
    return tensors


def main():
    script, builder, weights, input_json = sys.argv[1:5]
    spec = importlib.util.spec_from_file_location("deployed_model", script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(script))
    spec.loader.exec_module(module)
    if hasattr(module, "offline_environment"):  # model-zoo deployments: no network, scratch config dirs
        module.offline_environment(tempfile.mkdtemp())
        importlib.import_module("_torchvision_fix")  # the registry's torchvision needs it before first import
    model = eval(builder, dict(vars(module), torch=torch))
    if isinstance(model, tuple):  # builders that also return their input specification
        model = model[0]
    state = load_safetensors(weights)
    with torch.no_grad():  # overwrite every tensor so nothing of the fresh initialisation survives
        for tensor in model.state_dict(keep_vars=True).values():
            if tensor.is_floating_point() or tensor.is_complex():
                tensor.data.fill_(0)
    model.load_state_dict(state, strict=True)
    model.eval()
    inp = json.loads(input_json)
    if hasattr(module, "make_input"):
        sample = module.make_input(torch, inp)
    else:
        torch.manual_seed(inp["seed"])
        sample = torch.randn(*inp["shape"], dtype=getattr(torch, inp["dtype"]))
    with torch.no_grad():
        output = model(sample)
    if hasattr(module, "select_output"):
        output = module.select_output(output, inp)
    print(hashlib.sha256(output.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest())


if __name__ == "__main__":
    main()
