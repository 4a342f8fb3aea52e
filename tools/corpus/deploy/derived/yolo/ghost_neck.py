"""YOLOv8n with a Ghost neck (GhostNet's cheap feature maps, as in YOLOv8-ghost variants).

``ghost_yaml`` edits ultralytics' yolov8n model dictionary: the neck's two downsampling Convs become
ultralytics' GhostConv.  ``add_ghost_c2f`` then swaps the neck's four C2f blocks for ``GhostC2f``:
ultralytics' C2f (subclassed: same split/concat forward) whose bottlenecks are ultralytics'
GhostBottleneck.
"""

import copy

from torch import nn
from ultralytics.nn.modules import C2f, GhostBottleneck

from .surgery import replace_layer


class GhostC2f(C2f):
    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(GhostBottleneck(self.c, self.c) for _ in range(n))


def ghost_yaml(d):
    d = copy.deepcopy(d)
    d["head"] = [[f, n, "GhostConv" if m == "Conv" else m, args] for f, n, m, args in d["head"]]
    return d


def add_ghost_c2f(model):
    first_head = len(model.yaml["backbone"])
    for k, layer in enumerate(model.model):
        if k >= first_head and type(layer) is C2f:
            c1, c2 = layer.cv1.conv.in_channels, layer.cv2.conv.out_channels
            replace_layer(model, k, GhostC2f(c1, c2, len(layer.m)))
    return model
