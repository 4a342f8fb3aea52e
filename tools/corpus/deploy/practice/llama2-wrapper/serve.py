import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve; _serve.prepare()

# Llama 2 style model behind our logit processor (lm_service.py next to this script).
import tempfile

import torch
import torch.distributed as dist
from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized
from llama_models.llama3.args import ModelArgs

from lm_service import ServingConfig, ServingLM

# llama-models' reference layers are fairscale model-parallel ones: one process, one shard.
if not dist.is_initialized():
    store = os.path.join(tempfile.mkdtemp(prefix="lm-service-dist-"), "filestore")
    dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)
if not model_parallel_is_initialized():
    initialize_model_parallel(1)

args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=None, vocab_size=256, multiple_of=32, norm_eps=1e-5,
                 rope_theta=10000.0, use_scaled_rope=False, max_batch_size=1, max_seq_len=32)
cfg = ServingConfig(temperature=0.7, repetition_penalty=1.3)

torch.manual_seed(0)
model = ServingLM(args, cfg)
# The reference code leaves its weights uninitialised (a checkpoint is loaded next); ours: N(0, 0.02).
torch.manual_seed(0)
with torch.no_grad():
    for _, parameter in model.named_parameters():
        if parameter.dim() >= 2:
            torch.nn.init.normal_(parameter, mean=0.0, std=0.02)

spec = {"shape": [1, 16], "dtype": "int64", "seed": 1234, "values": [(37 * i + 11) % 256 for i in range(16)],
        "kwargs": {"start_pos": 0}}
CUSTOM = {
    "shape": "wrapper",
    "base": "llama2-base",
    "added_classes": ["lm_service.ServingLM", "lm_service.ServingConfig"],
    "changed_classes": [],
    "functions": ["lm_service.apply_repetition_penalty"],
}
_serve.serve(model, spec, CUSTOM)
