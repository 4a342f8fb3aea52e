"""Run by a torch interpreter: build a fresh copy of a deployed architecture, load recovered weights
from a safetensors file written by linux.zen.model, run the fixed input, print the output's sha256.

usage: rebuild_model.py DEPLOY_SCRIPT BUILDER_EXPR WEIGHTS.safetensors INPUT_JSON
"""

import importlib.util
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from volatility3_zen.reuse.__main__ import tensor_sha256  # noqa: E402
from volatility3_zen.reuse.bundle import read_safetensors  # noqa: E402  (the torch venv need not have safetensors)


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
    with open(weights, "rb") as handle:
        state = read_safetensors(handle.read())
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
    print(tensor_sha256(output))


if __name__ == "__main__":
    main()
