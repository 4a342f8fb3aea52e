"""Makes the registry's torchvision wheel importable with the local CPU torch: import this first.

torchvision 0.28.0 from the package registry ships a ``_C.so`` that does not load with the local
``torch 2.13.0+cpu`` wheel, and its own import then dies in ``_meta_registrations.py`` with
``operator torchvision::nms does not exist``.  Importing this module before the first torchvision
import defines ``torchvision::nms`` and ``torchvision::qnms`` (the two operators that import needs)
with a pure-torch implementation, imports torchvision, and lets ``torchvision.ops.nms`` run them.
Then torchvision, timm (which always imports it), ultralytics and transformers (which imports it
when it is installed) import.  The other C++ operators (roi_align, deform_conv2d, ...) stay missing
and raise when called.  When the real extension loads, it is used and nothing is registered.

The registration lives as long as the process (the ``Library`` object is kept in ``_LIBRARY``), so
its function is part of the process's memory and of its ground truth.
"""

import importlib.util
import os

import torch

SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_LIBRARY = None


def nms(dets, scores, iou_threshold):
    """Greedy non-maximum suppression, same contract as torchvision's C++ kernel.

    Returns the indices of the kept boxes (int64), in decreasing order of score.
    """
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=dets.device)
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        width = (torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest])).clamp(min=0)
        height = (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest])).clamp(min=0)
        inter = width * height
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return torch.stack(keep)


def qnms(dets, scores, iou_threshold):
    """``torchvision::qnms``: the integer representations of quantized boxes and scores."""
    return nms(dets.to(torch.float64), scores.to(torch.float64), iou_threshold)


def _has_ops():
    """Replaces ``torchvision.extension._has_ops`` so ``torchvision.ops.nms`` runs the operators above."""
    return True


def _real_extension_loads():
    """True if torchvision's own _C extension loads (then it provides the real operators)."""
    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for name in sorted(os.listdir(folder)):
            if name.startswith("_C.") and name.endswith(".so"):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def install():
    """Defines the operators unless torchvision's extension provides them, then imports torchvision.

    Idempotent.  Must run before anything imports torchvision.
    """
    global _LIBRARY
    if _LIBRARY is not None or _real_extension_loads():
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for name, function in (("nms", nms), ("qnms", qnms)):
        library.define(name + SCHEMA)
        library.impl(name, function, "CompositeExplicitAutograd")
    _LIBRARY = library
    import torchvision.extension

    torchvision.extension._has_ops = _has_ops


install()
