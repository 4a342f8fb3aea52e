"""acme/yolov5-tweaks: torch.hub entry points for our YOLOv5 variants.

    model = torch.hub.load("acme/yolov5-tweaks", "yolov5s_custom", nc=80)

yolov5s_custom: YOLOv5s (yolov5 7.0 yaml) whose backbone C3 blocks carry ECA channel attention
(Wang et al., "ECA-Net", CVPR 2020): a 1-D conv across the globally pooled channel descriptor, kernel
size adapted to the channel count.  The neck and head are the stock ones.
"""

dependencies = ["torch", "yolov5"]

import math
import os

import torch
import torch.nn as nn

from yolov5.models.common import C3
from yolov5.models.yolo import DetectionModel


def eca_kernel_size(channels, gamma=2, b=1):
    """ECA's adaptive kernel size: the nearest odd number to log2(C)/gamma + b/gamma."""
    t = int(abs((math.log(channels, 2) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    def __init__(self, channels, gamma=2, b=1):
        super().__init__()
        k = eca_kernel_size(channels, gamma, b)
        self.k = k
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)  # b, c, 1, 1
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.sigmoid(y).expand_as(x)


class C3ECA(C3):
    """C3 with ECA on its output; same convs as C3, so stock C3 weights load into it."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.eca = ECA(c2)

    def forward(self, x):
        return self.eca(self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1)))

    @classmethod
    def from_c3(cls, c3):
        c1 = c3.cv1.conv.in_channels
        c2 = c3.cv3.conv.out_channels
        c_ = c3.cv1.conv.out_channels
        n = len(c3.m)
        shortcut = bool(n and c3.m[0].add)
        new = cls(c1, c2, n=n, shortcut=shortcut, e=c_ / c2)
        new.load_state_dict(c3.state_dict(), strict=False)  # keep the C3 weights, ECA starts fresh
        return new


def _swap(model, index, new):
    old = model.model[index]
    new.i, new.f = old.i, old.f  # same place in the graph, same inputs
    new.type = "C3ECA"
    new.np = sum(p.numel() for p in new.parameters())
    model.model[index] = new


def _cfg(name):
    import yolov5.models

    return os.path.join(os.path.dirname(yolov5.models.__file__), name)


def yolov5s_custom(pretrained=False, nc=80, channels=3, backbone_only=True):
    """YOLOv5s with ECA-C3 blocks (backbone C3s only unless backbone_only=False)."""
    model = DetectionModel(_cfg("yolov5s.yaml"), ch=channels, nc=nc)
    last = 9 if backbone_only else len(model.model)
    for k, m in enumerate(model.model):
        if k < last and type(m) is C3:
            _swap(model, k, C3ECA.from_c3(m))
    if pretrained:
        raise ValueError("no released weights for yolov5s_custom yet; fine-tune from yolov5s.pt")
    return model
