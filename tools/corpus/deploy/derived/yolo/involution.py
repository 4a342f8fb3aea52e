"""HIC-YOLOv5 style: yolov5s whose C3 blocks use involution instead of 3x3 convolutions.

``C3Inv`` is yolov5's own C3 (subclassed: same cv1/cv2/cv3 and forward), whose bottlenecks are
``InvBottleneck``: a 1x1 yolov5 Conv, then involution-pytorch's Inv2d (a spatially varying,
channel-shared kernel generated from the input), BN and SiLU, with the residual.
"""

from torch import nn
from involution_pytorch import Inv2d
from yolov5.models.common import C3, Conv


class InvBottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, kernel_size=3, group_ch=16):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, 1)
        self.inv = Inv2d(c2, kernel_size, 1, group_ch=group_ch)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.act(self.bn(self.inv(self.cv1(x))))
        return x + y if self.add else y


class C3Inv(C3):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, kernel_size=3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(InvBottleneck(c_, c_, shortcut, kernel_size) for _ in range(n)))

    @classmethod
    def like(cls, c3):
        """A C3Inv with the shape of an existing C3 (channels, depth, shortcut)."""
        c1, c_ = c3.cv1.conv.in_channels, c3.cv1.conv.out_channels
        c2 = c3.cv3.conv.out_channels
        shortcut = bool(getattr(c3.m[0], "add", False))
        return cls(c1, c2, len(c3.m), shortcut, e=c_ / c2)
