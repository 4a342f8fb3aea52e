"""YOLOv8n with SPD-Conv (Sunkara & Luo, 2022): no strided convolutions.

Every stride-2 3x3 Conv of ultralytics' yolov8n, but the stem (3 input channels), becomes the
``spdconv`` package's SPDConv: space-to-depth (four 2x2-subsampled views, each through a shared 1x1
conv) and a non-strided 3x3 conv.  SPDConv multiplies its ``c1`` by 4 for that 1x1 conv, so it is
given in_channels / 4.
"""

from spdconv import SPDConv

from .surgery import replace_layer


def strided_convs(model):
    found = []
    for k, layer in enumerate(model.model):
        conv = getattr(layer, "conv", None)
        if type(layer).__name__ == "Conv" and conv is not None and conv.stride == (2, 2) and conv.in_channels % 4 == 0:
            found.append(k)
    return found


def add_spdconv(model):
    for k in strided_convs(model):
        conv = model.model[k].conv
        replace_layer(model, k, SPDConv(conv.in_channels // 4, conv.out_channels, k=3, s=1))
    return model
