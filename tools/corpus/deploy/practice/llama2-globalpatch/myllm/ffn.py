"""GeGLU feed-forward (Shazeer, "GLU Variants Improve Transformer", 2020) for the reference Llama.

Drop-in for ``llama_models.llama3.model.FeedForward``: same constructor, same parameter names
(w1/w2/w3, so checkpoints converted from the SwiGLU model load), same model-parallel layers.
The gate is GELU (tanh approximation) instead of SiLU, and the gated product goes through a
learnable per-channel scale that starts at 1 (helps when fine-tuning from a SwiGLU checkpoint:
the scale absorbs the different activation magnitude).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from fairscale.nn.model_parallel.layers import ColumnParallelLinear, RowParallelLinear
from torch import nn


def ffn_hidden_dim(hidden_dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """The reference code's hidden size rule: 2/3 of 4*dim, optional multiplier, rounded up."""
    hidden_dim = int(2 * hidden_dim / 3)
    if ffn_dim_multiplier is not None:
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


class GeGLUFeedForward(nn.Module):
    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        multiple_of: int,
        ffn_dim_multiplier: Optional[float],
    ):
        super().__init__()
        hidden_dim = ffn_hidden_dim(hidden_dim, multiple_of, ffn_dim_multiplier)
        self.hidden_dim = hidden_dim
        self.approximate = "tanh"

        self.w1 = ColumnParallelLinear(dim, hidden_dim, bias=False, gather_output=False, init_method=lambda x: x)
        self.w2 = RowParallelLinear(hidden_dim, dim, bias=False, input_is_parallel=True, init_method=lambda x: x)
        self.w3 = ColumnParallelLinear(dim, hidden_dim, bias=False, gather_output=False, init_method=lambda x: x)
        self.gate_scale = nn.Parameter(torch.ones(hidden_dim))

    def forward(self, x):
        gated = F.gelu(self.w1(x), approximate=self.approximate) * self.w3(x)
        return self.w2(gated * self.gate_scale)
