"""Insert extra layers into a yaml-built YOLO model (models.yolo.Model's nn.Sequential with i/f routing)."""

import torch.nn as nn

import serve


def _absolute(ref, k):
    return k + ref if ref < 0 else ref


def insert_after(model, extra):
    """extra: {layer index: module}. The new module reads that layer and replaces it for every later
    reader (like adding a line to the yaml right after it and renumbering the routes)."""
    old = list(model.model)
    layers, new_index = [], {}
    for k, m in enumerate(old):
        layers.append(m)
        if k in extra:
            layers.append(extra[k])
        new_index[k] = len(layers) - 1  # what later layers read instead of layer k
    pos = {id(m): n for n, m in enumerate(layers)}

    for k, m in enumerate(old):
        n = pos[id(m)]
        refs = [m.f] if isinstance(m.f, int) else list(m.f)
        fixed = []
        for ref in refs:
            src = _absolute(ref, k)
            if src < 0:  # model input
                fixed.append(ref)
                continue
            tgt = new_index[src]
            fixed.append(tgt - n if ref < 0 else tgt)
        m.f = fixed[0] if isinstance(m.f, int) else fixed
        m.i = n
    for k, m in extra.items():
        m.i, m.f = pos[id(m)], -1
        m.type = type(m).__name__
        m.np = sum(p.numel() for p in m.parameters())

    save = set()
    for n, m in enumerate(layers):
        for ref in [m.f] if isinstance(m.f, int) else m.f:
            if ref != -1:
                save.add(ref % n)
    model.model = nn.Sequential(*layers)
    model.save = sorted(save)
    return model


def add_simam(model, layers):
    blocks = {k: serve.SimAM(model.model[k].conv.out_channels) for k in layers}
    return insert_after(model, blocks)
