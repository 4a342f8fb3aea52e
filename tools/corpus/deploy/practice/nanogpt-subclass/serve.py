import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve; _serve.prepare()

# nano-gpt's GPT with rotary position embeddings (GPT-NeoX style) instead of the learned absolute
# ones, and Gemma-2 style tanh soft-capping of the output logits.
import torch
import torch.nn as nn
from torch.nn import functional as F

from nano_gpt.config import GPTConfig
from nano_gpt.model import GPT, CausalSelfAttention


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embeddings (Su et al., RoFormer), cached up to block_size."""

    def __init__(self, head_dim, max_positions, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        t = torch.arange(max_positions).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos()[None, None], persistent=False)
        self.register_buffer("sin_cached", emb.sin()[None, None], persistent=False)

    def forward(self, T):
        return self.cos_cached[:, :, :T], self.sin_cached[:, :, :T]


class RotarySelfAttention(CausalSelfAttention):
    """nano-gpt's fused-qkv causal attention with rotary embeddings applied to queries and keys."""

    def __init__(self, config):
        super().__init__(config)
        self.head_dim = config.n_embd // config.n_head
        self.rotary = RotaryEmbedding(self.head_dim, config.block_size)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embed, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(T)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MyGPT(GPT):
    """GPT with rotary attention in every block, no learned position table, soft-capped logits."""

    def __init__(self, config, tokenizer=None, logit_softcap=15.0):
        super().__init__(config, tokenizer)
        self.logit_softcap = logit_softcap
        del self.transformer["wpe"]  # positions come from the rotary embedding now
        for block in self.transformer.h:
            block.attn = RotarySelfAttention(config)
            block.attn.apply(self._init_weights)

    def forward(self, x, targets=None):
        B, T = x.size()
        if T > self.config.block_size:
            raise ValueError(f"Cannot forward sequence of length {T}, block size is only {self.config.block_size}")
        h = self.transformer.wte(x)
        for block in self.transformer.h:
            h = block(h)
        h = self.transformer.ln_f(h)
        logits = self.lm_head(h)
        if self.logit_softcap:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


torch.manual_seed(0)
model = MyGPT(GPTConfig(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=64), tokenizer=None)

spec = {"shape": [1, 16], "dtype": "int64", "seed": 1234, "values": [(37 * i + 11) % 256 for i in range(16)],
        "output_path": [0]}  # forward returns (logits, loss)
CUSTOM = {
    "shape": "subclass",
    "base": "nanogpt-base",
    "added_classes": ["__main__.MyGPT", "__main__.RotarySelfAttention", "__main__.RotaryEmbedding"],
    "changed_classes": [],
    "functions": ["__main__.rotate_half", "__main__.apply_rotary_pos_emb"],
}
_serve.serve(model, spec, CUSTOM)
