"""GhostNet-style ResNet-18 for CIFAR-10: timm's resnet18 with Ghost modules in its basic blocks.

Han et al., "GhostNet: More Features from Cheap Operations" (CVPR 2020): a Ghost module makes half of
its output channels with an ordinary convolution and the other half with a cheap depthwise
convolution of the first half.  Here every 3x3 convolution of timm's BasicBlocks is replaced by one
(the stem and the 1x1 downsample convolutions stay), which roughly halves the block's FLOPs.

    model = ghost_resnet18(num_classes=10)

tools/corpus/obfuscate.py turns this file into o0x_net.py (the obfuscated derivative): keep every
name here free of getattr/setattr strings, so a rename stays consistent.
"""

import math

import timm
import torch
from timm.models.resnet import BasicBlock
from torch import nn


class GhostModule(nn.Module):
    """oup channels = primary (k x k conv) + cheap (dw_size x dw_size depthwise conv of the primary).

    As in GhostNet's reference code (huawei-noah/Efficient-AI-Backbones, ghostnet_pytorch).
    """

    def __init__(self, inp, oup, kernel_size=1, ratio=2, dw_size=3, stride=1, relu=True):
        super().__init__()
        self.oup = oup
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels, bias=False),
            nn.BatchNorm2d(new_channels),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.oup, :, :]


def ghost_conv_like(conv, ratio=2):
    """A GhostModule with the shape contract of ``conv`` (channels, kernel, stride); the block's BN follows it."""
    return GhostModule(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size[0],
        ratio=ratio,
        stride=conv.stride[0],
        relu=False,
    )


def ghostify_basic_blocks(model, ratio=2):
    """Replace conv1 and conv2 of every BasicBlock in ``model`` by Ghost modules; returns how many."""
    replaced = 0
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.conv1 = ghost_conv_like(block.conv1, ratio)
            block.conv2 = ghost_conv_like(block.conv2, ratio)
            replaced += 2
    return replaced


def ghost_resnet18(num_classes=10, ratio=2):
    model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes)
    count = ghostify_basic_blocks(model, ratio)
    assert count == 16, count
    # timm's own init for the new convs too; zero_init_last=False: a trained network's last BN
    # weights are not zero, and the Ghost branch must matter for the output.
    model.init_weights(zero_init_last=False)
    return model
