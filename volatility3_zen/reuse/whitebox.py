"""White-box analysis on a rebuilt model: what the rebuild is for.

``fgsm_demo`` runs the fast gradient sign method (Goodfellow et al., 2015) on a batch of inputs of the
model's input shape: each input moves by ``epsilon`` in the sign of the loss gradient, and an attack
succeeds where the prediction changes.  Labels are the model's own clean predictions, so the demo
needs no dataset.  It also checks what instrumentation needs: forward hooks fire on every leaf
module, and the backward pass reaches every parameter.
"""

from dataclasses import dataclass
from typing import Any, Dict


@dataclass
class FgsmResult:
    epsilon: float
    samples: int
    flipped: int  # predictions changed by the attack
    parameters_reached: int  # parameters the backward pass gave a gradient
    parameters_nonzero: int  # of those, with a non-zero one (a zero-initialised branch gives zeros)
    parameters: int
    hooked_modules: int  # leaf modules whose forward hook fired
    leaf_modules: int
    input_grad_norm: float

    @property
    def success_rate(self) -> float:
        return self.flipped / self.samples if self.samples else 0.0

    def __str__(self) -> str:
        return (f"FGSM eps={self.epsilon:g} on {self.samples} inputs: {self.flipped}/{self.samples} predictions changed "
                f"(success rate {100 * self.success_rate:.1f}%); backward reached {self.parameters_reached}/"
                f"{self.parameters} parameter tensors ({self.parameters_nonzero} non-zero), input gradient L1 "
                f"{self.input_grad_norm:.4g}; forward hooks "
                f"fired on {self.hooked_modules}/{self.leaf_modules} leaf modules")


def fgsm(model, inputs, labels, epsilon: float):
    """Adversarial inputs (one FGSM step) and the loss gradient with respect to the inputs."""
    import torch

    inputs = inputs.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    model.zero_grad()
    loss.backward()
    return (inputs + epsilon * inputs.grad.sign()).detach(), inputs.grad.detach()


def fgsm_demo(model, spec: Dict[str, Any], epsilon: float = 0.03, samples: int = 64, seed: int = 0) -> FgsmResult:
    """FGSM on ``samples`` random inputs of the spec's shape (the batch dimension replaced)."""
    import torch

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    shape = [samples] + list(spec["shape"][1:])
    inputs = torch.randn(*shape, generator=generator, dtype=getattr(torch, spec.get("dtype", "float32")))
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    fired = set()
    handles = [m.register_forward_hook(lambda module, args, output: fired.add(id(module))) for m in leaves]
    try:
        with torch.no_grad():
            labels = model(inputs).argmax(dim=1)
        adversarial, grad = fgsm(model, inputs, labels, epsilon)
        with torch.no_grad():
            flipped = int((model(adversarial).argmax(dim=1) != labels).sum())
    finally:
        for handle in handles:
            handle.remove()
    parameters = [p for p in model.parameters() if p.requires_grad]
    reached = [p for p in parameters if p.grad is not None]
    nonzero = sum(1 for p in reached if bool(p.grad.abs().sum() > 0))
    return FgsmResult(epsilon, samples, flipped, len(reached), nonzero, len(parameters), len(fired), len(leaves),
                      float(grad.abs().sum()))
