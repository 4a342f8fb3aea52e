"""nano-gpt's GPT with RWKV time mixing in place of self-attention (an "attention-free" GPT).

The time-mixing block is RWKV-4's (Peng et al., "RWKV: Reinventing RNNs for the Transformer Era",
2023): token shift, then receptance/key/value projections and the WKV recurrence with a learnt
per-channel decay and a bonus for the current token.  The WKV here is the numerically stable
recurrent form in plain torch (no CUDA kernel).  Everything else, embeddings, layer norms, MLPs,
the tied head and nano-gpt's ``_init_weights``, is nano-gpt's GPT.

    model = rwkv_gpt(GPTConfig(...))
"""

import math

import torch
from nano_gpt.model import GPT
from torch import nn


class RWKVTimeMix(nn.Module):
    def __init__(self, n_embd, layer_id, n_layer):
        super().__init__()
        self.layer_id = layer_id
        ratio_0_to_1 = layer_id / max(n_layer - 1, 1)
        ratio_1_to_almost_0 = 1.0 - layer_id / n_layer
        channel = torch.arange(n_embd, dtype=torch.float32)
        decay_speed = -5 + 8 * (channel / max(n_embd - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1)
        self.time_decay = nn.Parameter(decay_speed)
        zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(n_embd)], dtype=torch.float32) * 0.5
        self.time_first = nn.Parameter(torch.full((n_embd,), math.log(0.3)) + zigzag)
        ramp = (channel / n_embd).view(1, 1, n_embd)
        self.time_mix_k = nn.Parameter(ramp.pow(ratio_1_to_almost_0))
        self.time_mix_v = nn.Parameter(ramp.pow(ratio_1_to_almost_0) + 0.3 * ratio_0_to_1)
        self.time_mix_r = nn.Parameter(ramp.pow(0.5 * ratio_1_to_almost_0))
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.key = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(n_embd, n_embd, bias=False)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.output = nn.Linear(n_embd, n_embd, bias=False)

    def wkv(self, k, v):
        """out_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u + k_t} v_t) / (same without v), stably."""
        batch, steps, channels = k.shape
        w = -torch.exp(self.time_decay)
        u = self.time_first
        num = k.new_zeros(batch, channels)
        den = k.new_zeros(batch, channels)
        big = k.new_full((batch, channels), -1e38)
        outputs = []
        for t in range(steps):
            kt, vt = k[:, t], v[:, t]
            ww = u + kt
            top = torch.maximum(big, ww)
            e1, e2 = torch.exp(big - top), torch.exp(ww - top)
            outputs.append((e1 * num + e2 * vt) / (e1 * den + e2))
            ww = big + w
            top = torch.maximum(ww, kt)
            e1, e2 = torch.exp(ww - top), torch.exp(kt - top)
            num = e1 * num + e2 * vt
            den = e1 * den + e2
            big = top
        return torch.stack(outputs, dim=1)

    def forward(self, x):
        shifted = self.time_shift(x)
        xk = x * self.time_mix_k + shifted * (1 - self.time_mix_k)
        xv = x * self.time_mix_v + shifted * (1 - self.time_mix_v)
        xr = x * self.time_mix_r + shifted * (1 - self.time_mix_r)
        k = self.key(xk)
        v = self.value(xv)
        receptance = torch.sigmoid(self.receptance(xr))
        return self.output(receptance * self.wkv(k, v))


def replace_attention(model):
    """Swap every Block's CausalSelfAttention for RWKVTimeMix; returns the number swapped."""
    n_layer = len(model.transformer.h)
    for layer_id, block in enumerate(model.transformer.h):
        block.attn = RWKVTimeMix(model.config.n_embd, layer_id, n_layer)
        block.attn.apply(model._init_weights)  # nano-gpt's GPT-2 initialisation for the new Linears
    return n_layer


def rwkv_gpt(config):
    model = GPT(config, tokenizer=None)
    replace_attention(model)
    return model
