"""Layer surgery on YOLO models built from a yaml (yolov5, sas-yolov7, ultralytics).

The three packages build ``model.model``, an nn.Sequential whose layers carry ``i`` (index), ``f``
(from: -1 is the previous layer, other negatives count back, non-negatives are absolute indices),
``type`` and ``np``; ``model.save`` lists the layers whose outputs later layers read.
"""

from torch import nn


def _describe(new, index, source):
    new.i, new.f = index, source
    new.type = "%s.%s" % (type(new).__module__, type(new).__qualname__)
    new.np = sum(p.numel() for p in new.parameters())
    return new


def replace_layer(model, index, new):
    """Puts ``new`` in place of layer ``index``; it reads what the old layer read."""
    old = model.model[index]
    model.model[index] = _describe(new, old.i, old.f)
    return old


def insert_after(model, modules):
    """Inserts ``modules[k]`` right after layer k (for each k), reading layer k's output; every layer
    that read layer k now reads the inserted module instead, as in a yaml edited by hand."""
    old = list(model.model)
    where = {}  # old index -> new index of the output that replaces it
    layers = []
    for k, layer in enumerate(old):
        layers.append(layer)
        if k in modules:
            layers.append(modules[k])
        where[k] = len(layers) - 1
    position = {id(layer): n for n, layer in enumerate(layers)}

    def remap(ref, k, n):
        source = k + ref if ref < 0 else ref
        if source < 0:  # the first layer reads the model's input
            return ref
        target = where[source]
        return target - n if ref < 0 else target

    for k, layer in enumerate(old):
        n = position[id(layer)]
        refs = layer.f
        if isinstance(refs, int):
            layer.f = remap(refs, k, n)
        else:
            layer.f = [remap(ref, k, n) for ref in refs]
        layer.i = n
    for k, extra in modules.items():
        _describe(extra, position[id(extra)], -1)
    save = set()
    for n, layer in enumerate(layers):
        for ref in [layer.f] if isinstance(layer.f, int) else layer.f:
            if ref != -1:
                save.add(ref % n)
    model.model = nn.Sequential(*layers)
    model.save = sorted(save)
    return model
