"""SE-ResNet-18 for CIFAR-10: timm's resnet18 with our own squeeze-and-excitation blocks.

Hu et al., "Squeeze-and-Excitation Networks": global average pool, a bottleneck MLP (1x1 convs) and a
sigmoid gate that rescales the channels.  timm's BasicBlock calls ``self.se`` after its second BN
when it is set, so the SE block goes into that slot of every block; the rest is timm's resnet18.

    model = se_resnet18(num_classes=10, reduction=16)
"""

import timm
from timm.models.resnet import BasicBlock
from torch import nn


class SEBlock(nn.Module):
    def __init__(self, channels, reduction=16, min_hidden=8):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=True),
            nn.Sigmoid(),
        )
        self.reduction = reduction

    def forward(self, x):
        return x * self.excite(self.squeeze(x))

    def extra_repr(self):
        return "reduction=%d" % self.reduction


def add_se(model, reduction=16):
    """Put an SEBlock into the ``se`` slot of every timm BasicBlock of ``model``; returns how many."""
    added = 0
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.se = SEBlock(block.bn2.num_features, reduction)
            added += 1
    return added


def se_resnet18(num_classes=10, reduction=16):
    model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes)
    count = add_se(model, reduction)
    assert count == 8, count
    # timm's own init for the SE convs too; zero_init_last=False: as after training, the gated
    # branch contributes to the output.
    model.init_weights(zero_init_last=False)
    return model
