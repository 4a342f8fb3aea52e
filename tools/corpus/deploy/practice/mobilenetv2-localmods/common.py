"""Attention layers shared by our mobile backbones (copied around between projects, hence 'common')."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def eca_kernel_size(channels, gamma=2, beta=1):
    """ECA-Net's adaptive kernel size: the nearest odd number to |log2(C) + b| / gamma."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


def hard_sigmoid(x):
    """Piecewise-linear sigmoid (MobileNetV3): cheap on mobile CPUs and quantises well."""
    return F.relu6(x + 3.0) / 6.0


class ECA(nn.Module):
    """Efficient Channel Attention (Wang et al., CVPR 2020): global average pooling, a 1-D conv across
    channels (no dimensionality reduction) and a gate.  Takes the ``se_layer(chs, act_layer=...)``
    arguments timm's blocks pass, so it drops into their ``se`` slot."""

    def __init__(self, channels, act_layer=None, gamma=2, beta=1, kernel_size=None, device=None, dtype=None):
        super().__init__()
        k = kernel_size or eca_kernel_size(channels, gamma, beta)
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        y = x.mean((2, 3), keepdim=True)                      # B, C, 1, 1
        y = self.conv(y.squeeze(-1).transpose(-1, -2))        # B, 1, C
        y = y.transpose(-1, -2).unsqueeze(-1)                 # B, C, 1, 1
        return x * hard_sigmoid(y)
