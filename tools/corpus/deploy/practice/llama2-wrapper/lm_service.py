"""The served language model: llama-models' reference Transformer plus our logit processing
(temperature, CTRL repetition penalty on the prompt's tokens, a bias against special tokens), so the
inference server gets ready-to-sample logits in one call."""

import dataclasses
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from llama_models.llama3.args import ModelArgs
from llama_models.llama3.model import Transformer


@dataclasses.dataclass
class ServingConfig:
    temperature: float = 0.7
    repetition_penalty: float = 1.3       # CTRL (Keskar et al. 2019); 1.0 turns it off
    suppress_token_ids: Tuple[int, ...] = (0, 1, 2)  # pad / bos / eos of our tokenizer
    suppress_bias: float = -100.0


def apply_repetition_penalty(logits, tokens, penalty):
    """CTRL penalty: at position t, every token among tokens[:, :t+1] gets its logit divided by
    ``penalty`` if positive and multiplied by it if negative."""
    seen = F.one_hot(tokens, logits.size(-1)).cumsum(dim=1) > 0  # (B, T, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


class ServingLM(nn.Module):
    def __init__(self, args: ModelArgs, cfg: ServingConfig):
        super().__init__()
        self.cfg = cfg
        self.base = Transformer(args)
        self.register_buffer("inv_temperature", torch.tensor(1.0 / cfg.temperature))
        bias = torch.zeros(args.vocab_size)
        bias[list(cfg.suppress_token_ids)] = cfg.suppress_bias
        self.register_buffer("logit_bias", bias)

    def forward(self, tokens, start_pos=0):
        logits = self.base(tokens, start_pos)  # (B, T, V) float32
        if self.cfg.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, tokens, self.cfg.repetition_penalty)
        return logits * self.inv_temperature + self.logit_bias
