"""Builders of the non-YOLO model families for families.py: ResNet, MobileNetV2, nanoGPT, Llama 2.

``BUILDERS = {name: fn(torch) -> (model, input_spec)}``; families.py merges it with family_yolo.py's.
Every builder seeds torch with SEED right before it builds, uses random weights and downloads nothing.
The input specification is the one model_zoo.py documents ({shape, dtype, seed}, plus ``values``,
``output_path`` and, read by families.py, ``kwargs``: keyword arguments of the forward call).

Bases (the family's original code, as its package ships it):
- ``resnet-base``: timm resnet18, 10 classes, 1x3x32x32 (CIFAR-10 sized);
- ``mobilenetv2-base``: timm mobilenetv2_100, 10 classes, 1x3x32x32;
- ``nanogpt-base``: nano-gpt's GPT, 2 layers, 2 heads, n_embd 64, block 32, vocab 256, 16 token ids;
- ``llama2-base``: llama-models' reference Transformer (llama_models/llama3/model.py, the package's
  only reference model code) with Llama 2 style arguments: multi-head attention (no GQA), rope_theta
  10000, no RoPE scaling; dim 64, 2 layers, 4 heads, vocab 256, max_seq_len 32; 16 token ids,
  ``forward(tokens, start_pos=0)``.  It runs on fairscale's model-parallel layers, so the process
  joins a one-process gloo group (file:// rendezvous in TMPDIR) and a model-parallel group of 1.

Derivatives of these bases live in derived/others/ and are added below.
"""

import os
import tempfile

SEED = 0
INPUT_SEED = 1234
TOKENS = [(37 * i + 11) % 256 for i in range(16)]

# What the model-building code creates keeps alive until the process is killed.
KEEP = {}


def token_spec(**extra):
    spec = {"shape": [1, len(TOKENS)], "dtype": "int64", "seed": INPUT_SEED, "values": list(TOKENS)}
    spec.update(extra)
    return spec


def build_resnet_base(torch):
    import timm

    torch.manual_seed(SEED)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return model, {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": INPUT_SEED}


def build_mobilenetv2_base(torch):
    import timm

    torch.manual_seed(SEED)
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10)
    return model, {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": INPUT_SEED}


def nanogpt_config():
    from nano_gpt.config import GPTConfig

    return GPTConfig(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=64)


def build_nanogpt_base(torch):
    from nano_gpt.model import GPT

    torch.manual_seed(SEED)
    model = GPT(nanogpt_config(), tokenizer=None)
    return model, token_spec(output_path=[0])  # forward returns (logits, loss)


def init_model_parallel(torch):
    """A one-process gloo group and a model-parallel group of 1, as llama-models' generation code sets up."""
    import torch.distributed as dist
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized

    if not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix="zen-family-dist-"), "filestore")
        dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)
    if not model_parallel_is_initialized():
        initialize_model_parallel(1)


def llama2_args(**overrides):
    from llama_models.llama3.args import ModelArgs

    fields = dict(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=None,  # Llama 2 (7B/13B): multi-head attention
        vocab_size=256,
        multiple_of=32,
        norm_eps=1e-5,
        rope_theta=10000.0,
        use_scaled_rope=False,
        max_batch_size=1,
        max_seq_len=32,
    )
    fields.update(overrides)
    return ModelArgs(**fields)


def init_random_weights(torch, model):
    """The reference code creates its weights uninitialised (``init_method=lambda x: x``; a checkpoint
    is loaded next).  Stand-in for the checkpoint: N(0, 0.02) for every matrix, seeded; norms stay 1."""
    torch.manual_seed(SEED)
    with torch.no_grad():
        for _, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                torch.nn.init.normal_(parameter, mean=0.0, std=0.02)


def build_llama2_base(torch):
    init_model_parallel(torch)
    from llama_models.llama3.model import Transformer

    torch.manual_seed(SEED)
    model = Transformer(llama2_args())
    init_random_weights(torch, model)
    return model, token_spec(kwargs={"start_pos": 0})


# -- derivatives (derived/others/): each builds its base package's model and adds or swaps parts --


def image_spec():
    return {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": INPUT_SEED}


def build_resnet_ghost(torch):
    """timm resnet18 whose BasicBlock 3x3 convs are GhostModules (derived/others/resnet_ghost.py)."""
    from derived.others.resnet_ghost import ghost_resnet18

    torch.manual_seed(SEED)
    return ghost_resnet18(num_classes=10), image_spec()


def build_resnet_ghost_obf(torch):
    """resnet-ghost through tools/corpus/obfuscate.py (derived/others/o0x_net.py): same architecture,
    same weights; O0x842f89a1 is ghost_resnet18."""
    from derived.others import o0x_net

    torch.manual_seed(SEED)
    return o0x_net.O0x842f89a1(10), image_spec()


def build_resnet_se(torch):
    """timm resnet18 with an own SEBlock in every BasicBlock's ``se`` slot (derived/others/resnet_se.py)."""
    from derived.others.resnet_se import se_resnet18

    torch.manual_seed(SEED)
    return se_resnet18(num_classes=10), image_spec()


def build_mobilenetv2_ghost(torch):
    """timm mobilenetv2_100 whose 1x1 convs are GhostPointwise (derived/others/mobilenetv2_ghost.py)."""
    from derived.others.mobilenetv2_ghost import ghost_mobilenetv2

    torch.manual_seed(SEED)
    return ghost_mobilenetv2(num_classes=10), image_spec()


def build_mobilenetv2_v3(torch):
    """The family's newer version: timm mobilenetv3_small_100, 10 classes (derived/others/mobilenet_v3.py)."""
    from derived.others.mobilenet_v3 import mobilenetv3_cifar

    torch.manual_seed(SEED)
    return mobilenetv3_cifar(num_classes=10), image_spec()


def build_nanogpt_lora(torch):
    """nano-gpt GPT with loralib.Linear (r=4) in attention and MLP (derived/others/nanogpt_lora.py)."""
    from derived.others.nanogpt_lora import lora_gpt

    torch.manual_seed(SEED)
    return lora_gpt(nanogpt_config(), r=4), token_spec(output_path=[0])


def build_nanogpt_rwkv(torch):
    """nano-gpt GPT with RWKV time mixing instead of attention (derived/others/nanogpt_rwkv.py)."""
    from derived.others.nanogpt_rwkv import rwkv_gpt

    torch.manual_seed(SEED)
    return rwkv_gpt(nanogpt_config()), token_spec(output_path=[0])


def build_llama2_torchonly(torch):
    """llama-models' reference code copied with torch.nn layers instead of fairscale's
    (derived/others/llama2_torchonly.py): no process group; the base's arguments and weight init."""
    from derived.others.llama2_torchonly import ModelArgs, Transformer

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
    torch.manual_seed(SEED)
    model = Transformer(args)
    init_random_weights(torch, model)
    return model, token_spec(kwargs={"start_pos": 0})


def build_llama2_llama3args(torch):
    """llama-models' reference Transformer with Llama 3.1-style arguments: GQA, rope_theta 500000,
    scaled RoPE, ffn_dim_multiplier (derived/others/llama2_llama3args.py)."""
    init_model_parallel(torch)
    from derived.others.llama2_llama3args import llama31_style_transformer

    torch.manual_seed(SEED)
    model = llama31_style_transformer()
    init_random_weights(torch, model)
    return model, token_spec(kwargs={"start_pos": 0})


BUILDERS = {
    "resnet-base": build_resnet_base,
    "mobilenetv2-base": build_mobilenetv2_base,
    "nanogpt-base": build_nanogpt_base,
    "llama2-base": build_llama2_base,
    "resnet-ghost": build_resnet_ghost,
    "resnet-se": build_resnet_se,
    "resnet-ghost-obf": build_resnet_ghost_obf,
    "mobilenetv2-ghost": build_mobilenetv2_ghost,
    "mobilenetv2-v3": build_mobilenetv2_v3,
    "nanogpt-lora": build_nanogpt_lora,
    "nanogpt-rwkv": build_nanogpt_rwkv,
    "llama2-torchonly": build_llama2_torchonly,
    "llama2-llama3args": build_llama2_llama3args,
}
