import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve
if __name__ == "__main__":  # surgery_utils imports this file again as `serve`: set up once
    _serve.prepare()

# YOLOv7 with SimAM attention after the three backbone outputs (P3/P4/P5).
# SimAM (Yang et al., ICML 2021) is parameter-free: each activation is weighted by the inverse of its
# energy relative to its channel's spatial statistics.

import torch
import torch.nn as nn

CUSTOM = {
    "shape": "script-imported-twice",
    "base": "yolov7-base",
    "added_classes": ["serve.SimAM"],
    "changed_classes": [],
    "functions": [],
}


class SimAM(nn.Module):
    def __init__(self, channels=None, e_lambda=1e-4):
        super().__init__()
        self.channels = channels
        self.e_lambda = e_lambda
        self.activation = nn.Sigmoid()

    def extra_repr(self):
        return "channels=%s, lambda=%f" % (self.channels, self.e_lambda)

    def forward(self, x):
        b, c, h, w = x.size()
        n = w * h - 1
        x_minus_mu_square = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = x_minus_mu_square / (4 * (x_minus_mu_square.sum(dim=[2, 3], keepdim=True) / n + self.e_lambda)) + 0.5
        return x * self.activation(y)


def yolov7_model(nc=80):
    import sas_yolov7
    from sas_yolov7.models.yolo import Model

    cfg = os.path.join(os.path.dirname(sas_yolov7.__file__), "cfg", "training", "yolov7.yaml")
    return Model(cfg, ch=3, nc=nc)


def main():
    from sas_yolov7.utils.torch_utils import initialize_weights

    import surgery_utils

    torch.manual_seed(0)
    model = yolov7_model()
    model = surgery_utils.add_simam(model, (24, 37, 50))
    initialize_weights(model)
    spec = {"shape": [1, 3, 64, 64], "dtype": "float32", "seed": 1234, "output_path": [0]}
    _serve.serve(model, spec, CUSTOM)


if __name__ == "__main__":
    main()
