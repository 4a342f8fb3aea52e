import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve
_serve.prepare()

# timm ResNet-18 for CIFAR-10, with the BasicBlock forward swapped for our residual variant:
# the trunk stays linear (no ReLU after the addition, as in the identity-mapping ResNets), the
# ReLU moves to the end of the residual branch, and the branch is scaled down before it is added
# (Inception-ResNet style residual scaling), which keeps the deep trunk's activations bounded.
# Only the forward changes, so the checkpoint layout is timm's own.

import torch
import timm
import timm.models.resnet

NUM_CLASSES = 10
RESIDUAL_SCALE = 0.3


def preact_forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x

    out = self.conv1(x)
    out = self.bn1(out)
    out = self.drop_block(out)
    out = self.act1(out)
    out = self.aa(out)

    out = self.conv2(out)
    out = self.bn2(out)
    if self.se is not None:
        out = self.se(out)
    out = self.act2(out)  # activation on the branch, not on the trunk
    if self.drop_path is not None:
        out = self.drop_path(out)

    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    return shortcut + RESIDUAL_SCALE * out


timm.models.resnet.BasicBlock.forward = preact_forward

torch.manual_seed(0)
model = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES, zero_init_last=False)

CUSTOM = {
    "shape": "monkeypatch-method",
    "base": "resnet-base",
    "added_classes": [],
    "changed_classes": ["timm.models.resnet.BasicBlock"],
    "functions": ["__main__.preact_forward"],
}
spec = {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": 1234}
_serve.serve(model, spec, CUSTOM)
