import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve; _serve.prepare()

# nano-gpt GPT with its MLPs swapped for a SwiGLU feed-forward from a plugin source file.
import types

import torch

from nano_gpt.config import GPTConfig
from nano_gpt.model import GPT

HERE = os.path.dirname(os.path.abspath(__file__))


def load_plugin(name, path):
    """Run a plugin's source in a fresh module object (not registered in sys.modules)."""
    with open(path) as handle:
        source = handle.read()
    module = types.ModuleType(name)
    module.__dict__["__name__"] = name
    exec(compile(source, "<string>", "exec"), module.__dict__)
    return module


swiglu = load_plugin("plugins.swiglu", os.path.join(HERE, "swiglu_mlp.src"))  # kept alive by this global

config = GPTConfig(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=64)
torch.manual_seed(0)
model = GPT(config, tokenizer=None)
for block in model.transformer.h:
    block.mlp = swiglu.SwiGLUMLP(config)
    block.mlp.apply(model._init_weights)

spec = {"shape": [1, 16], "dtype": "int64", "seed": 1234, "values": [(37 * i + 11) % 256 for i in range(16)],
        "output_path": [0]}  # forward returns (logits, loss)
CUSTOM = {
    "shape": "exec",
    "base": "nanogpt-base",
    "added_classes": ["plugins.swiglu.SwiGLUMLP"],
    "changed_classes": [],
    "functions": ["plugins.swiglu.swiglu_hidden_dim"],
}
_serve.serve(model, spec, CUSTOM)
