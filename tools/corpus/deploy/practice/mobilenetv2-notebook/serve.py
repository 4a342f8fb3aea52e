import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve
_serve.prepare()

# Serving export of the "mbv2-coordatt" notebook: the cells below are the notebook's code cells,
# run in order in this module's namespace the way the IPython kernel runs them (each compiled
# under its <ipython-input-N-hash> name and registered in linecache), so the model's classes are
# exactly the notebook's.

import hashlib
import linecache

CELLS = [
    # In [1]
    '''\
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm

torch.manual_seed(0)
''',
    # In [2]
    '''\
class HardSigmoid(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu6(x + 3.0, inplace=self.inplace) / 6.0


class HardSwish(nn.Module):
    """x * relu6(x + 3) / 6 (Howard et al., MobileNetV3)"""
    def __init__(self, inplace=False):
        super().__init__()
        self.gate = HardSigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.gate(x)
''',
    # In [3]
    '''\
def coord_pool(x):
    """Average over W and over H: (B, C, H, 1) and (B, C, W, 1), concatenated along dim 2."""
    h, w = x.shape[2], x.shape[3]
    x_h = x.mean(dim=3, keepdim=True)
    x_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)
    return torch.cat([x_h, x_w], dim=2), h, w


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021)."""
    def __init__(self, channels, reduction=8, min_mid=8):
        super().__init__()
        mid = max(min_mid, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mid, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = HardSwish()
        self.conv_h = nn.Conv2d(mid, channels, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mid, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        identity = x
        y, h, w = coord_pool(x)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid()
        return identity * a_w * a_h
''',
    # In [4]
    '''\
def swap_head_activation(model):
    # conv_head -> bn2 (BatchNormAct2d) -> act: ReLU6 -> hard-swish, as in MobileNetV3's last stage
    model.bn2.act = HardSwish()
    return model


def add_coord_attention(model, stages=(1, 2)):
    for i in stages:
        stage = model.blocks[i]
        channels = stage[-1].conv_pwl.out_channels
        stage.append(CoordAtt(channels))
    return model
''',
    # In [5]
    '''\
model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10)
model = add_coord_attention(swap_head_activation(model))
n_params = sum(p.numel() for p in model.parameters())
''',
]


def run_cell(number, source, namespace):
    name = "<ipython-input-%d-%s>" % (number, hashlib.sha1(source.encode()).hexdigest()[:12])
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    exec(compile(source, name, "exec"), namespace)


for number, cell in enumerate(CELLS, 1):
    run_cell(number, cell, globals())

CUSTOM = {
    "shape": "notebook",
    "base": "mobilenetv2-base",
    "added_classes": ["__main__.HardSigmoid", "__main__.HardSwish", "__main__.CoordAtt"],
    "changed_classes": [],
    "functions": ["__main__.coord_pool"],
}
spec = {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": 1234}
_serve.serve(model, spec, CUSTOM)  # noqa: F821  (model comes from In [5])
