"""Coordinate attention for the YOLOv8n neck (Hou et al., "Coordinate Attention for Efficient Mobile
Network Design", CVPR 2021).

Run with runpy.run_path by serve.py (this file is shared between our training and serving repos and
is not a package module).  ``add_coord_attention(model)`` swaps the three C2f blocks that feed
Detect (P3/P4/P5) for ``C2fCA``: the same C2f, followed by coordinate attention.  Layer indices,
``f`` routing and the save list are unchanged.
"""

import torch
import torch.nn as nn

from ultralytics.nn.modules import C2f


class HSigmoid(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class HSwish(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.sigmoid = HSigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


class CoordAtt(nn.Module):
    def __init__(self, inp, oup, reduction=32):
        super().__init__()
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = x.mean(dim=3, keepdim=True)  # n, c, h, 1  (pool along W)
        x_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # n, c, w, 1  (pool along H)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid()
        return identity * a_w * a_h


class C2fCA(C2f):
    """C2f + coordinate attention on the block output."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, reduction=32):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.ca = CoordAtt(c2, c2, reduction)

    def forward(self, x):
        return self.ca(super().forward(x))


NECK_OUTPUTS = (15, 18, 21)  # yolov8.yaml: the P3, P4, P5 C2f layers that Detect reads


def add_coord_attention(model, layers=NECK_OUTPUTS):
    for k in layers:
        old = model.model[k]
        c1, c2 = old.cv1.conv.in_channels, old.cv2.conv.out_channels
        n = len(old.m)
        shortcut = bool(n and old.m[0].add)
        new = C2fCA(c1, c2, n=n, shortcut=shortcut, e=old.c / c2)
        new.load_state_dict(old.state_dict(), strict=False)  # keep the C2f weights
        new.i, new.f, new.type = old.i, old.f, "C2fCA"
        new.np = sum(p.numel() for p in new.parameters())
        model.model[k] = new
    assert model.save == sorted(model.save)  # routing untouched: same indices, same sources
    return model
