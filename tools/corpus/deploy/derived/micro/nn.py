"""A practitioner's customisation of micrograd 0.1.0's ``micrograd.nn``: the derivative model.

It reuses micrograd's ``Value`` (the autograd scalar) and its ``Module``, ``Neuron``, ``Layer`` and
``MLP`` classes, and changes them the way one adapts a small library to a project:

- ``tanh``: a new autograd operation, built like micrograd's own ``Value.relu`` (a ``Value`` with a
  ``_backward`` closure), without touching the ``Value`` class;
- ``leaky_relu``: an activation composed from ``Value`` operations only;
- ``LeakyNeuron(Neuron)``: a neuron whose activation is leaky ReLU or tanh instead of ReLU;
- ``ResidualLayer(Layer)``: a layer of ``LeakyNeuron`` with a skip connection (when its input and
  output widths agree) and a fixed dropout-like keep mask drawn from ``random`` at construction;
- ``RMSNorm(Module)``: RMS normalisation with one learned gain per feature;
- ``MLPWithNorm(MLP)``: micrograd's MLP with ``ResidualLayer`` hidden layers, an ``RMSNorm`` after
  each, and micrograd's own linear ``Layer`` as the output layer.

Runs under CPython 3.6+ (micrograd's own floor), standard library only besides micrograd.
"""

import math
import random

from micrograd.engine import Value
from micrograd.nn import MLP, Layer, Module, Neuron


def tanh(v):
    """tanh as an autograd operation on a micrograd ``Value``."""
    t = math.tanh(v.data)
    out = Value(t, (v,), "tanh")

    def _backward():
        v.grad += (1 - t * t) * out.grad

    out._backward = _backward
    return out


def leaky_relu(v, slope):
    """relu(v) - slope * relu(-v), from micrograd's own operations."""
    return v.relu() - (-v).relu() * slope


class LeakyNeuron(Neuron):
    """A micrograd ``Neuron`` with a leaky-ReLU (``activation="leaky"``) or tanh activation."""

    def __init__(self, nin, nonlin=True, activation="leaky", slope=0.1):
        super().__init__(nin, nonlin)
        self.activation = activation
        self.slope = slope

    def __call__(self, x):
        act = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        if not self.nonlin:
            return act
        if self.activation == "tanh":
            return tanh(act)
        return leaky_relu(act, self.slope)

    def __repr__(self):
        kind = "Tanh" if self.activation == "tanh" else "LeakyReLU(%g)" % self.slope
        return "%sNeuron(%d)" % (kind if self.nonlin else "Linear", len(self.w))


class ResidualLayer(Layer):
    """A layer of ``LeakyNeuron`` with a skip connection and a fixed dropout-like keep mask."""

    def __init__(self, nin, nout, keep=0.75, **kwargs):
        self.neurons = [LeakyNeuron(nin, **kwargs) for _ in range(nout)]
        self.residual = nin == nout
        self.keep = keep
        # Inverted dropout, drawn once: a dropped unit outputs 0, a kept one is scaled by 1/keep.
        self.mask = tuple(1.0 / keep if random.random() < keep else 0.0 for _ in range(nout))

    def __call__(self, x):
        out = [n(x) * m for n, m in zip(self.neurons, self.mask)]
        if self.residual:
            out = [o + xi for o, xi in zip(out, x)]
        return out[0] if len(out) == 1 else out

    def __repr__(self):
        return "ResidualLayer of [%s]" % ", ".join(str(n) for n in self.neurons)


class RMSNorm(Module):
    """x * gain / sqrt(mean(x^2) + eps), one learned gain per feature."""

    def __init__(self, dim, eps=1e-5):
        self.gain = [Value(1.0) for _ in range(dim)]
        self.eps = eps

    def __call__(self, x):
        mean_square = sum((xi * xi for xi in x), Value(0.0)) * (1.0 / len(x))
        scale = (mean_square + self.eps) ** -0.5
        return [xi * scale * g for xi, g in zip(x, self.gain)]

    def parameters(self):
        return list(self.gain)

    def __repr__(self):
        return "RMSNorm(%d)" % len(self.gain)


class MLPWithNorm(MLP):
    """micrograd's MLP with residual leaky/tanh hidden layers, each followed by an RMSNorm."""

    def __init__(self, nin, nouts, activations=("leaky", "tanh"), slope=0.1, keep=0.75):
        sizes = [nin] + list(nouts)
        last = len(nouts) - 1
        self.layers = []
        for i in range(len(nouts)):
            if i == last:  # the output layer is micrograd's own, linear
                self.layers.append(Layer(sizes[i], sizes[i + 1], nonlin=False))
            else:
                activation = activations[i % len(activations)]
                layer = ResidualLayer(sizes[i], sizes[i + 1], keep=keep, activation=activation, slope=slope)
                self.layers.append(layer)
        self.norms = [RMSNorm(sizes[i + 1]) for i in range(last)]

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.norms):
                x = self.norms[i](x)
        return x

    def parameters(self):
        return super().parameters() + [p for norm in self.norms for p in norm.parameters()]

    def __repr__(self):
        parts = [str(layer) for layer in self.layers] + [str(norm) for norm in self.norms]
        return "MLPWithNorm of [%s]" % ", ".join(parts)
