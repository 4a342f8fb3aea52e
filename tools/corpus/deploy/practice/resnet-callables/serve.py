import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve
_serve.prepare()

# timm ResNet-18 for CIFAR-10 with a soft channel gate in every BasicBlock's `se` slot
# (timm calls block.se after bn2 when it is set).  The gate is a squeeze-excite variant:
# leaky-ReLU bottleneck, temperature-softened logits and a gate in (0, 2) instead of (0, 1),
# so channels can be amplified as well as damped.  The layer is assembled from plain
# functions with type(), the way our config-driven layer factory registers layers.

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.models.resnet import BasicBlock

NUM_CLASSES = 10
GATE_CONFIG = {"reduction": 8, "min_hidden": 8, "temperature": 2.0, "negative_slope": 0.1}


def make_temperature(t):
    def scale(x):
        return x / t
    return scale


def soft_gate_init(self, channels, reduction=8, min_hidden=8, temperature=1.0, negative_slope=0.01):
    nn.Module.__init__(self)
    hidden = max(channels // reduction, min_hidden)
    self.pool = nn.AdaptiveAvgPool2d(1)
    self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
    self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
    self.act = partial(F.leaky_relu, negative_slope=negative_slope)
    self.squash = lambda z: 2.0 * torch.sigmoid(z)
    self.temper = make_temperature(temperature)
    self.channels = channels


def soft_gate_forward(self, x):
    z = self.fc2(self.act(self.fc1(self.pool(x))))
    return x * self.squash(self.temper(z))


def soft_gate_repr(self):
    return "channels=%d" % self.channels


SoftGate = type("SoftGate", (nn.Module,), {
    "__init__": soft_gate_init,
    "forward": soft_gate_forward,
    "extra_repr": soft_gate_repr,
})


def add_gates(model, **config):
    count = 0
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.se = SoftGate(block.bn2.num_features, **config)
            count += 1
    return count


torch.manual_seed(0)
model = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES, zero_init_last=False)
assert add_gates(model, **GATE_CONFIG) == 8

CUSTOM = {
    "shape": "callables",
    "base": "resnet-base",
    "added_classes": ["__main__.SoftGate"],
    "changed_classes": [],
    "functions": ["__main__.soft_gate_init", "__main__.soft_gate_forward", "__main__.soft_gate_repr",
                  "__main__.make_temperature"],
}
spec = {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": 1234}
_serve.serve(model, spec, CUSTOM)
