"""Builders of the YOLO model families for families.py: YOLOv5, YOLOv7, YOLOv8 and their derivatives.

``BUILDERS = {name: fn(torch) -> (model, input_spec)}``; families.py merges it with family_others.py's.
Every builder seeds torch with SEED right before it builds, uses random weights, downloads nothing,
and takes a 1x3x64x64 input; the output is the first item of the (predictions, raw maps) tuple the
three detection models return in eval mode.

Bases (each package's own model from the yaml it ships):
- ``yolov5-base``: yolov5 7.0.14, ``models.yolo.DetectionModel("yolov5s.yaml")``, 80 classes;
- ``yolov7-base``: sas-yolov7 1.0.7, ``models.yolo.Model("cfg/training/yolov7.yaml")``, 80 classes;
- ``yolov8-base``: ultralytics 8.4.190, ``YOLO("yolov8n.yaml").model`` (a DetectionModel).

Derivatives (code in derived/yolo/, which builds the base package's model and changes part of it):
- ``yolov5-distill``: ``derived.yolo.distill.Distiller`` holding a yolov5n student and a frozen yolov5s
  teacher (both yolov5's DetectionModel) and feature adapters; the root is the Distiller;
- ``yolov5-involution``: yolov5s with every C3 replaced by ``derived.yolo.involution.C3Inv`` (Inv2d);
- ``yolov7-c3``: yolov7 with yolov5's C3 in place of the head's three ELAN-H output convs;
- ``yolov7-cbam``: yolov7 with ``derived.yolo.cbam.CBAM`` after the three backbone outputs;
- ``yolov8-spdconv``: yolov8n with spdconv's SPDConv in place of the strided convs (not the stem);
- ``yolov8-ghost``: yolov8n with a Ghost neck (GhostConv downsamplers, ``derived.yolo.ghost_neck.GhostC2f``).
"""

import os

SEED = 0
INPUT_SEED = 1234
IMAGE_SPEC = {"shape": [1, 3, 64, 64], "dtype": "float32", "seed": INPUT_SEED, "output_path": [0]}

# What the model-building code creates keeps alive until the process is killed.
KEEP = {}


def _spec():
    return dict(IMAGE_SPEC)


# -- YOLOv5 (the yolov5 package) ------------------------------------------------------------------


def yolov5_model(torch, cfg="yolov5s.yaml"):
    import yolov5.models
    from yolov5.models.yolo import DetectionModel

    return DetectionModel(os.path.join(os.path.dirname(yolov5.models.__file__), cfg), ch=3, nc=80)


def build_yolov5_base(torch):
    torch.manual_seed(SEED)
    return yolov5_model(torch), _spec()


def build_yolov5_distill(torch):
    from derived.yolo.distill import Distiller

    torch.manual_seed(SEED)
    student = yolov5_model(torch, "yolov5n.yaml")
    teacher = yolov5_model(torch, "yolov5s.yaml")
    return Distiller(student, teacher), _spec()


def build_yolov5_involution(torch):
    from yolov5.models.common import C3
    from yolov5.utils.torch_utils import initialize_weights

    from derived.yolo.involution import C3Inv
    from derived.yolo.surgery import replace_layer

    torch.manual_seed(SEED)
    model = yolov5_model(torch)
    for k, layer in enumerate(model.model):
        if type(layer) is C3:
            replace_layer(model, k, C3Inv.like(layer))
    initialize_weights(model)
    return model, _spec()


# -- YOLOv7 (the sas-yolov7 package) ---------------------------------------------------------------


def yolov7_model(torch):
    import sas_yolov7
    from sas_yolov7.models.yolo import Model

    cfg = os.path.join(os.path.dirname(sas_yolov7.__file__), "cfg", "training", "yolov7.yaml")
    return Model(cfg, ch=3, nc=80)


def build_yolov7_base(torch):
    torch.manual_seed(SEED)
    return yolov7_model(torch), _spec()


def build_yolov7_c3(torch):
    from sas_yolov7.utils.torch_utils import initialize_weights

    from derived.yolo.c3_slots import add_c3

    torch.manual_seed(SEED)
    model = add_c3(yolov7_model(torch))
    initialize_weights(model)
    return model, _spec()


def build_yolov7_cbam(torch):
    from sas_yolov7.utils.torch_utils import initialize_weights

    from derived.yolo.cbam import add_cbam

    torch.manual_seed(SEED)
    model = add_cbam(yolov7_model(torch))
    initialize_weights(model)
    return model, _spec()


# -- YOLOv8 (ultralytics) ----------------------------------------------------------------------------


def yolov8_dict():
    from ultralytics.nn.tasks import yaml_model_load

    return yaml_model_load("yolov8n.yaml")  # bundled with ultralytics; the file name sets scale "n"


def build_yolov8_base(torch):
    from ultralytics import YOLO

    torch.manual_seed(SEED)
    yolo = YOLO("yolov8n.yaml", verbose=False)
    KEEP["yolo"] = yolo  # the wrapper a deployment holds; its .model is the nn.Module tree
    return yolo.model, _spec()


def build_yolov8_spdconv(torch):
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import initialize_weights

    from derived.yolo.spd import add_spdconv

    torch.manual_seed(SEED)
    model = add_spdconv(DetectionModel(yolov8_dict(), ch=3, nc=80, verbose=False))
    initialize_weights(model)
    return model, _spec()


def build_yolov8_ghost(torch):
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import initialize_weights

    from derived.yolo.ghost_neck import add_ghost_c2f, ghost_yaml

    torch.manual_seed(SEED)
    model = add_ghost_c2f(DetectionModel(ghost_yaml(yolov8_dict()), ch=3, nc=80, verbose=False))
    initialize_weights(model)
    return model, _spec()


BUILDERS = {
    "yolov5-base": build_yolov5_base,
    "yolov7-base": build_yolov7_base,
    "yolov8-base": build_yolov8_base,
    "yolov5-distill": build_yolov5_distill,
    "yolov5-involution": build_yolov5_involution,
    "yolov7-c3": build_yolov7_c3,
    "yolov7-cbam": build_yolov7_cbam,
    "yolov8-spdconv": build_yolov8_spdconv,
    "yolov8-ghost": build_yolov8_ghost,
}
