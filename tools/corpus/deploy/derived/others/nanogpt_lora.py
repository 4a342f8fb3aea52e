"""LoRA fine-tuning of nano-gpt's GPT with Microsoft's loralib (Hu et al., "LoRA", 2021).

The base is nano-gpt's own ``GPT``.  Every Linear of the attention (``c_attn``, ``c_proj``) and of the
MLP (``c_fc``, ``c_proj``) becomes a ``loralib.Linear`` of rank 4 that keeps the base weight frozen
and learns ``B @ A``; the embeddings, the layer norms and the tied ``lm_head`` stay nano-gpt's.  The
adapters are kept unmerged (``merge_weights=False``), as when several adapters share one base.

    model = lora_gpt(GPTConfig(...), r=4)
"""

import loralib as lora
import torch
from nano_gpt.model import GPT
from torch import nn

LORA_TARGETS = {"attn": ("c_attn", "c_proj"), "mlp": ("c_fc", "c_proj")}


def lora_linear_from(base, r=4, alpha=8, dropout=0.05):
    """A loralib.Linear that computes what ``base`` did (its weight and bias copied) plus B @ A."""
    layer = lora.Linear(
        base.in_features,
        base.out_features,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        merge_weights=False,
        bias=base.bias is not None,
    )
    with torch.no_grad():
        layer.weight.copy_(base.weight)
        if base.bias is not None:
            layer.bias.copy_(base.bias)
    return layer


def inject_lora(model, r=4, alpha=8, dropout=0.05):
    """Replace the attention and MLP Linears of every nano-gpt Block; returns the number replaced."""
    count = 0
    for block in model.transformer.h:
        for part, names in LORA_TARGETS.items():
            parent = block.get_submodule(part)
            for name in names:
                child = parent.get_submodule(name)
                if isinstance(child, nn.Linear) and not isinstance(child, lora.Linear):
                    parent.register_module(name, lora_linear_from(child, r, alpha, dropout))
                    count += 1
    return count


def stand_in_for_training(model, std=0.02):
    """LoRA starts with B = 0; set B as after fine-tuning, so the adapters change the output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, lora.Linear):
                nn.init.normal_(module.lora_B, std=std)


def lora_gpt(config, r=4, alpha=8, dropout=0.05):
    model = GPT(config, tokenizer=None)
    count = inject_lora(model, r, alpha, dropout)
    assert count == 4 * config.n_layer, count
    stand_in_for_training(model)
    lora.mark_only_lora_as_trainable(model)
    return model
