"""A derivative of micrograd 0.1.0 (Karpathy's scalar autograd): see ``derived.micro.nn``."""

from derived.micro.nn import LeakyNeuron, MLPWithNorm, ResidualLayer, RMSNorm, leaky_relu, tanh

__all__ = ["LeakyNeuron", "MLPWithNorm", "RMSNorm", "ResidualLayer", "leaky_relu", "tanh"]
