import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve; _serve.prepare()

# Serve our ECA-MobileNetV2 (CIFAR-10 head). The layers come from common.py and utils/ next to this
# script: python puts the script's folder first on sys.path, so "import common" finds ours.
import functools

import timm
import torch
import torch.nn as nn

from common import ECA, eca_kernel_size
from utils.blocks import ECAInvertedResidual

ECA_STAGES = (2, 3, 4, 5)  # 32, 64, 96 and 160 channel stages; the 24-ch stage and the head stay plain


def to_eca_block(block):
    """An ECAInvertedResidual with the same geometry as ``block``, carrying over its weights."""
    in_chs = block.conv_pw.in_channels
    mid_chs = block.conv_pw.out_channels
    out_chs = block.conv_pwl.out_channels
    new = ECAInvertedResidual(
        in_chs,
        out_chs,
        dw_kernel_size=block.conv_dw.kernel_size[0],
        stride=block.conv_dw.stride[0],
        noskip=not block.has_skip,
        exp_ratio=mid_chs / in_chs,
        act_layer=nn.ReLU6,
        # the attention sits on the block output, so size its kernel for out_chs
        se_layer=functools.partial(ECA, kernel_size=eca_kernel_size(out_chs)),
    )
    missing, unexpected = new.load_state_dict(block.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("se.") for k in missing), (missing, unexpected)
    return new


torch.manual_seed(0)
model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10)
for stage in ECA_STAGES:
    blocks = model.blocks[stage]
    for i in range(len(blocks)):
        blocks[i] = to_eca_block(blocks[i])

spec = {"shape": [1, 3, 32, 32], "dtype": "float32", "seed": 1234}
CUSTOM = {
    "shape": "local-modules",
    "base": "mobilenetv2-base",
    "added_classes": ["common.ECA", "utils.blocks.ECAInvertedResidual"],
    "changed_classes": [],
    "functions": ["common.eca_kernel_size", "common.hard_sigmoid"],
}
_serve.serve(model, spec, CUSTOM)
