"""CBAM (Woo et al., 2018) attention for YOLOv7, as practitioners add it after the backbone stages.

Channel attention (a shared MLP over average- and max-pooled features) followed by spatial attention
(a 7x7 conv over the channel-wise mean and max).  ``add_cbam`` inserts one block after each of
sas-yolov7's three backbone outputs (layers 24, 37 and 50 of cfg/training/yolov7.yaml); the head's
routes to those layers then read the attended features.
"""

import torch
from torch import nn

from .surgery import insert_after


class ChannelAttention(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * self.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels, reduction=16, kernel_size=7):
        super().__init__()
        self.channels = channels
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x):
        return self.spatial_attention(self.channel_attention(x))


BACKBONE_OUTPUTS = (24, 37, 50)


def add_cbam(model, layers=BACKBONE_OUTPUTS):
    """Inserts a CBAM after each of ``layers`` (1x1 Conv layers of sas-yolov7's yolov7)."""
    return insert_after(model, {k: CBAM(model.model[k].conv.out_channels) for k in layers})
