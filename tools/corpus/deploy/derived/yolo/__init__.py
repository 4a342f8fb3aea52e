"""Derivatives of the YOLOv5, YOLOv7 and YOLOv8 bases (family_yolo.py).

Each module customises a base package's model the way practitioners do: it builds the package's own
model and swaps or adds a few layers of its own (or of another YOLO package), so the result is still
that package's model class holding mostly that package's modules.

- ``surgery``: replace or insert layers of a YOLO ``model.model`` Sequential (yolov5, sas-yolov7 and
  ultralytics all route layer outputs through each layer's ``f``/``i`` and the model's ``save`` list)
- ``distill``: ``Distiller``, a knowledge-distillation training wrapper (yolov5n student, yolov5s teacher)
- ``involution``: ``C3Inv``, yolov5's C3 with involution (involution-pytorch's Inv2d) bottlenecks
- ``c3_slots``: yolov7 with yolov5's C3 in place of the three head ELAN-H output convs
- ``cbam``: ``CBAM`` attention, inserted after yolov7's three backbone outputs
- ``spd``: yolov8n with the spdconv package's SPDConv in place of every strided conv but the stem
- ``ghost_neck``: yolov8n with a Ghost neck: ultralytics GhostConv downsamplers and own ``GhostC2f``
"""
