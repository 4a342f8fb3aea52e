"""Ghost-MobileNetV2: timm's mobilenetv2_100 with Ghost modules as its pointwise (1x1) convolutions.

The expansion (``conv_pw``) and projection (``conv_pwl``) 1x1 convolutions of every inverted residual,
and the 1x1 convolution of the first depthwise-separable block, become Ghost modules: half of the
output channels from a 1x1 conv, the other half from a cheap 3x3 depthwise conv of those.  The
depthwise convolutions, the stem, the head and the classifier are timm's.

    model = ghost_mobilenetv2(num_classes=10)
"""

import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models._efficientnet_builder import efficientnet_init_weights
from torch import nn


class GhostPointwise(nn.Module):
    """A 1x1 convolution's drop-in: primary 1x1 conv + cheap depthwise conv, concatenated, no bias."""

    def __init__(self, in_chs, out_chs, ratio=2, dw_size=3):
        super().__init__()
        self.out_chs = out_chs
        primary_chs = -(-out_chs // ratio)
        cheap_chs = primary_chs * (ratio - 1)
        self.primary = nn.Conv2d(in_chs, primary_chs, 1, bias=False)
        self.primary_bn = nn.BatchNorm2d(primary_chs)
        self.cheap = nn.Conv2d(primary_chs, cheap_chs, dw_size, padding=dw_size // 2, groups=primary_chs, bias=False)
        self.cheap_bn = nn.BatchNorm2d(cheap_chs)

    def forward(self, x):
        y = self.primary_bn(self.primary(x))
        z = self.cheap_bn(self.cheap(y))
        return torch.cat((y, z), 1)[:, : self.out_chs]


def ghost_pointwise(model, ratio=2):
    """Swap the 1x1 convolutions of timm's efficientnet blocks for GhostPointwise; returns how many."""
    swapped = 0
    for block in model.modules():
        if isinstance(block, InvertedResidual):
            names = ("conv_pw", "conv_pwl")
        elif isinstance(block, DepthwiseSeparableConv):
            names = ("conv_pw",)
        else:
            continue
        for name in names:
            conv = block.get_submodule(name)
            block.register_module(name, GhostPointwise(conv.in_channels, conv.out_channels, ratio))
            swapped += 1
    return swapped


def ghost_mobilenetv2(num_classes=10, ratio=2):
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=num_classes)
    count = ghost_pointwise(model, ratio)
    assert count == 33, count
    efficientnet_init_weights(model)  # timm's TF-style init, for the Ghost convs too
    return model
