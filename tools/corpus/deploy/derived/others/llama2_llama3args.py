"""The reference Llama model of ``llama-models`` with Llama 3.1-style arguments.

The code is the package's own ``llama_models.llama3.model.Transformer`` (fairscale model-parallel
layers, one process): what changes from the Llama 2 base is only the configuration, as between
Llama 2 and Llama 3.1 checkpoints: grouped-query attention (``n_kv_heads < n_heads``), RoPE with
``rope_theta=500000`` and Llama 3.1's frequency scaling (``use_scaled_rope``), and an FFN width
multiplier.  Sizes stay tiny (those of the base).

    model = llama31_style_transformer()   # after a one-process model-parallel setup
"""

from llama_models.llama3.args import ModelArgs
from llama_models.llama3.model import Transformer


def llama31_style_args(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32):
    return ModelArgs(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,  # grouped-query attention: 2 query heads per key/value head
        vocab_size=vocab_size,
        multiple_of=32,
        ffn_dim_multiplier=1.3,
        norm_eps=1e-5,
        rope_theta=500000.0,
        use_scaled_rope=True,
        max_batch_size=1,
        max_seq_len=max_seq_len,
    )


def llama31_style_transformer(**sizes):
    return Transformer(llama31_style_args(**sizes))
