import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve; _serve.prepare()

# Llama 2 style model from Meta's reference code, with our GeGLU MLP.
# llama_models' TransformerBlock looks FeedForward up in its module's globals when it is built,
# so rebinding the name there (before Transformer(...)) is enough: no fork of model.py needed.

import tempfile

import torch
import torch.distributed as dist
from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized

import llama_models.llama3.model as M
from llama_models.llama3.args import ModelArgs

from myllm import GeGLUFeedForward

M.FeedForward = GeGLUFeedForward

TOKENS = [(37 * i + 11) % 256 for i in range(16)]

CUSTOM = {
    "shape": "monkeypatch-global",
    "base": "llama2-base",
    "added_classes": ["myllm.ffn.GeGLUFeedForward"],
    "changed_classes": [],
    "functions": ["myllm.ffn.ffn_hidden_dim"],
}


def setup_model_parallel():
    # single process, single shard: the reference layers still want a process group
    if not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix="llama-dist-"), "filestore")
        dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)
    if not model_parallel_is_initialized():
        initialize_model_parallel(1)


def init_weights(model, std=0.02, seed=0):
    # the reference layers come uninitialised (a checkpoint would be loaded here)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                torch.nn.init.normal_(p, mean=0.0, std=std)


def main():
    setup_model_parallel()
    args = ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=None,
        vocab_size=256,
        multiple_of=32,
        norm_eps=1e-5,
        rope_theta=10000.0,
        use_scaled_rope=False,
        max_batch_size=1,
        max_seq_len=32,
    )
    torch.manual_seed(0)
    model = M.Transformer(args)
    init_weights(model)
    spec = {"shape": [1, len(TOKENS)], "dtype": "int64", "seed": 1234, "values": TOKENS, "kwargs": {"start_pos": 0}}
    _serve.serve(model, spec, CUSTOM)


if __name__ == "__main__":
    main()
