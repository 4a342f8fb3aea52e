"""YOLOv7 with YOLOv5's C3 blocks in three slots.

The 1x1 convs that close the head's three ELAN-H blocks (layers 75, 88 and 101 of sas-yolov7's
cfg/training/yolov7.yaml: the features the RepConv/IDetect head reads) become yolov5's
``models.common.C3`` (CSP bottlenecks with 3 convs) with the same input and output widths.
"""

from yolov5.models.common import C3

from .surgery import replace_layer

C3_SLOTS = (75, 88, 101)


def add_c3(model, slots=C3_SLOTS, depth=1):
    for k in slots:
        conv = model.model[k].conv
        replace_layer(model, k, C3(conv.in_channels, conv.out_channels, depth, shortcut=False))
    return model
