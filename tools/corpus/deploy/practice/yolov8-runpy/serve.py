import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve; _serve.prepare(numerics=False)

# YOLOv8n with coordinate attention in the neck. The blocks live in custom_blocks.py, which is shared
# with the training repo and executed here with runpy (it is not importable as a module there).

import runpy

import torch
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils.torch_utils import initialize_weights

HERE = os.path.dirname(os.path.abspath(__file__))

CUSTOM = {
    "shape": "runpy",
    "base": "yolov8-base",
    "added_classes": ["<run_path>.C2fCA", "<run_path>.CoordAtt", "<run_path>.HSwish", "<run_path>.HSigmoid"],
    "changed_classes": [],
    "functions": [],
}


def main():
    blocks = runpy.run_path(os.path.join(HERE, "custom_blocks.py"))
    cfg = yaml_model_load("yolov8n.yaml")  # bundled with ultralytics; scale "n" from the name
    torch.manual_seed(0)
    model = DetectionModel(cfg, ch=3, nc=80, verbose=False)
    model = blocks["add_coord_attention"](model)
    initialize_weights(model)
    spec = {"shape": [1, 3, 64, 64], "dtype": "float32", "seed": 1234, "output_path": [0]}
    _serve.serve(model, spec, CUSTOM)


if __name__ == "__main__":
    main()
