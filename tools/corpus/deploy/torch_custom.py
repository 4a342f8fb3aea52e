"""A custom PyTorch model holding the tensor and module shapes that model recovery must handle.

The tree mixes Sequential, ModuleList and ModuleDict containers with Conv2d, BatchNorm2d, Linear,
LayerNorm, Embedding and Dropout, and carries: a parameter that is a view with a storage offset,
a non-contiguous (transposed) buffer, two parameters sharing one storage (tied embedding and output
weights), buffers of every common dtype, a 6-D tensor, an empty tensor, a non-persistent buffer,
hyper-parameters of every simple kind, and one forward pre-hook and one forward hook.  The classes
are defined here, in __main__, so their code exists only in this process's memory.

Run under the harness's torch venv (tools/corpus/interpreters.py), which also sets the CPU limits.
"""

import torch
from torch import nn

import _groundtruth

SEED = 0
INPUT = {"shape": [2, 3, 8, 8], "dtype": "float32", "seed": 1234}
FORWARD_PASSES = 3


class ConvStem(nn.Module):
    def __init__(self, in_channels, channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.body(x)


class ResidualMLP(nn.Module):
    def __init__(self, width, expansion=2, activation="gelu"):
        super().__init__()
        self.expansion = expansion
        self.activation = activation
        self.up = nn.Linear(width, width * expansion)
        self.down = nn.Linear(width * expansion, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(x + self.down(nn.functional.gelu(self.up(x))))


class CustomNet(nn.Module):
    def __init__(self, in_channels=3, channels=8, width=16, vocab=10, depth=2, dropout=0.1):
        super().__init__()
        # hyper-parameters of every simple kind
        self.width = width
        self.dropout_p = dropout
        self.label = "zen-custom"
        self.use_embedding = True
        self.checkpoint = None
        self.kernel = (3, 3)
        self.stages = [channels, width]
        self.config = {"activation": "gelu", "eps": 1e-5, "depth": depth}
        self.magic = 2 ** 70 + 1
        self.phase = 1.5 - 2j
        self.tag = b"zen"

        self.stem = ConvStem(in_channels, channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = nn.Linear(channels, width)
        self.blocks = nn.ModuleList([ResidualMLP(width) for _ in range(depth)])
        self.heads = nn.ModuleDict({"logits": nn.Linear(width, vocab, bias=False), "gate": nn.Linear(width, 1)})
        self.embedding = nn.Embedding(vocab, width)
        self.heads["logits"].weight = self.embedding.weight  # tied: two names, one storage
        self.dropout = nn.Dropout(dropout)
        self.offset_scale = nn.Parameter(torch.randn(width + 4)[4:])  # a view: storage offset 4

        self.register_buffer("token_ids", torch.arange(vocab, dtype=torch.int64))
        self.register_buffer("transposed", torch.arange(12, dtype=torch.float32).reshape(3, 4).t())
        self.register_buffer("float64_values", torch.linspace(0, 1, 5, dtype=torch.float64))
        self.register_buffer("float16_values", torch.randn(4, dtype=torch.float16))
        self.register_buffer("bfloat16_values", torch.randn(4, dtype=torch.bfloat16))
        self.register_buffer("int8_values", torch.tensor([-128, -1, 0, 127], dtype=torch.int8))
        self.register_buffer("bool_mask", torch.tensor([True, False, True]))
        self.register_buffer("complex64_values", torch.randn(3, dtype=torch.complex64))
        self.register_buffer("six_d", torch.randn(1, 2, 1, 2, 1, 3))
        self.register_buffer("empty", torch.empty(0, 4))
        self.register_buffer("scratch", torch.zeros(width), persistent=False)

    def forward(self, x):
        h = self.project(self.pool(self.stem(x)).flatten(1))
        h = h + self.embedding(self.token_ids).mean(0) * self.offset_scale
        for block in self.blocks:
            h = block(h)
        h = self.dropout(h)
        gate = torch.sigmoid(self.heads["gate"](h))
        return self.heads["logits"](h) * gate + self.transposed.mean()


def clamp_inputs(module, inputs):
    """Forward pre-hook: clamps the input (pure, so repeated forwards agree)."""
    return (inputs[0].clamp(-4.0, 4.0),)


def scale_logits(module, inputs, output):
    """Forward hook on the logits head."""
    return output * 0.5


def build_model():
    torch.manual_seed(SEED)
    model = CustomNet().eval()
    model.register_forward_pre_hook(clamp_inputs)
    model.heads["logits"].register_forward_hook(scale_logits)
    return model


MODEL = build_model()


def main():
    sample = torch.randn(*INPUT["shape"])
    with torch.no_grad():
        for _ in range(FORWARD_PASSES):
            MODEL(sample)
    _groundtruth.write_and_wait("torch-custom", models=[(MODEL, INPUT)])


if __name__ == "__main__":
    main()
