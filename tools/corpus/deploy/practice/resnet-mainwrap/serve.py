import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve
_serve.prepare()

# ResNet-18 (timm) for CIFAR-10 with layer-scaled, recalibrated residual blocks.
#
# Every BasicBlock of layer1..layer4 is wrapped in a ScaledResidual: the block's update
# (its output minus its shortcut) goes through an SRM-style channel gate and a learned
# per-channel layer scale whose initial value decays with depth (stochastic-depth schedule).
# At eval time the scaling is deterministic (expected value of the dropped path).

import torch
import torch.nn as nn
import timm
from timm.models.resnet import BasicBlock

NUM_CLASSES = 10
DROP_PATH_RATE = 0.1
LAYER_SCALE_INIT = 0.5
EPS = 1e-5


def channel_stats(x, eps=EPS):
    """Per-channel mean and standard deviation over the spatial positions: (B, C, 2)."""
    mean = x.mean(dim=(2, 3))
    std = x.var(dim=(2, 3), unbiased=False).add(eps).sqrt()
    return torch.stack((mean, std), dim=-1)


def shortcut_of(block, x):
    return x if block.downsample is None else block.downsample(x)


def scale_path(delta, gamma, keep_prob, training):
    """Layer scale with stochastic depth: per-sample Bernoulli drop while training, its mean at eval."""
    gamma = gamma.view(1, -1, 1, 1)
    if not training or keep_prob >= 1.0:
        return delta * (gamma * keep_prob)
    mask = delta.new_empty((delta.shape[0], 1, 1, 1)).bernoulli_(keep_prob)
    return delta * gamma * mask


class ChannelGate(nn.Module):
    """Style-based recalibration (Lee et al., SRM): pooled mean/std -> channel-wise fc -> BN -> sigmoid."""

    def __init__(self, channels):
        super().__init__()
        self.cfc = nn.Conv1d(channels, channels, kernel_size=2, groups=channels, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        nn.init.constant_(self.cfc.weight, 0.5)

    def forward(self, x):
        z = self.bn(self.cfc(channel_stats(x)))  # (B, C, 1)
        return x * torch.sigmoid(z).unsqueeze(-1)


class ScaledResidual(nn.Module):
    def __init__(self, block, drop_prob=0.0, init_scale=LAYER_SCALE_INIT):
        super().__init__()
        channels = block.bn2.num_features
        self.block = block
        self.gate = ChannelGate(channels)
        self.gamma = nn.Parameter(torch.full((channels,), float(init_scale)))
        self.keep_prob = 1.0 - drop_prob

    def forward(self, x):
        shortcut = shortcut_of(self.block, x)
        delta = self.block(x) - shortcut
        return shortcut + scale_path(self.gate(delta), self.gamma, self.keep_prob, self.training)

    def extra_repr(self):
        return "keep_prob=%.3f" % self.keep_prob


def build_model():
    model = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES, zero_init_last=False)
    blocks = [(layer, i) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
              for i in range(len(layer))]
    for depth, (layer, i) in enumerate(blocks):
        assert isinstance(layer[i], BasicBlock)
        rate = DROP_PATH_RATE * depth / (len(blocks) - 1)
        layer[i] = ScaledResidual(layer[i], drop_prob=rate, init_scale=LAYER_SCALE_INIT * (1.0 - rate))
    return model


torch.manual_seed(0)
model = build_model()

CUSTOM = {
    "shape": "script",
    "base": "resnet-base",
    "added_classes": ["__main__.ScaledResidual", "__main__.ChannelGate"],
    "changed_classes": [],
    "functions": ["__main__.channel_stats", "__main__.shortcut_of", "__main__.scale_path"],
}
spec = {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": 1234}
_serve.serve(model, spec, CUSTOM)
