"""Adversaries for the ``adversarial`` methods: from each task feature, the other tasks and the input.

For each task feature F_t the adversary tries to predict every OTHER task's label and to rebuild the
input. Two ways to turn it against the encoder (``loss.adversary_objective``):

- ``reverse`` (DeepObfuscator-style, the ``adversarial`` baseline): a gradient-reversal layer between
  F_t and the adversary, so one backward pass trains the adversary to win and pushes the encoder to
  *maximise* its loss. The encoder can do that by making the adversary confidently wrong, which keeps
  the information for any fresh attacker (measured on the synthetic set: docs/data.md).
- ``entropy`` (the maximum-entropy adversary of Roy and Boddeti, CVPR 2019): the adversary learns on
  the detached features, and the encoder, through a frozen copy of it, is pushed towards the adversary's
  guess from nothing: a uniform distribution over the other task's classes, and the decoder's output
  for an empty (all-zero) feature. Both targets are bounded, so the encoder cannot win by flipping.

Every term is per sample, so the adversary trains inside the same DP-SGD module as the encoder. The
frozen copy is a functional call on detached weights, not a module call: Opacus's per-sample hooks
never see it, so the adversary's per-sample gradients hold its own loss only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as nnf


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward."""
    return _ReverseGradient.apply(x, scale)


class Adversary(nn.Module):
    def __init__(
        self, feature_shape: tuple[int, ...], num_classes: list[int], image_shape: tuple[int, ...], hidden: int
    ):
        super().__init__()
        n_in, n_pixels = math.prod(feature_shape), math.prod(image_shape)
        self.num_classes = list(num_classes)
        tasks = range(len(num_classes))
        # probes[t][s]: from task t's feature to task s's label (s != t)
        self.probes = nn.ModuleDict(
            {
                f"{t}_{s}": nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, num_classes[s]))
                for t in tasks
                for s in tasks
                if s != t
            }
        )
        self.decoders = nn.ModuleList(
            nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_pixels)) for _ in tasks
        )

    def per_sample_loss(
        self,
        features: torch.Tensor,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        objective: Literal["reverse", "entropy"] = "reverse",
    ) -> torch.Tensor:
        """Per-sample ``[B]``: minimising it trains the adversaries to predict the other tasks and rebuild
        the input, and pushes the encoder against them (``objective``: see the module docstring)."""
        if objective not in ("reverse", "entropy"):
            raise ValueError(f"adversary objective {objective!r}: choose 'reverse' or 'entropy'")
        total = features.new_zeros(features.shape[0])
        target = inputs.flatten(1)
        for t, decoder in enumerate(self.decoders):
            flat = features[:, t].flatten(1)
            # reverse: one path, the encoder's gradient flipped; entropy: the adversary learns on its own
            f = reverse_gradient(flat) if objective == "reverse" else flat.detach()
            total = total + nnf.mse_loss(decoder(f), target, reduction="none").mean(1)
            for s in range(len(self.num_classes)):
                if s != t:
                    total = total + nnf.cross_entropy(self.probes[f"{t}_{s}"](f), labels[:, s], reduction="none")
            if objective == "entropy":
                total = total + self._towards_nothing(t, flat)
        return total

    def _towards_nothing(self, t: int, flat: torch.Tensor) -> torch.Tensor:
        """The encoder's term: the frozen adversaries' outputs on F_t against their outputs knowing nothing."""
        decoder = self.decoders[t]
        blank = _frozen(decoder, flat.new_zeros(1, flat.shape[1]))
        term = nnf.mse_loss(_frozen(decoder, flat), blank.expand(flat.shape[0], -1), reduction="none").mean(1)
        for s in range(len(self.num_classes)):
            if s != t:
                # cross-entropy to the uniform guess: minimal when the probe cannot tell the classes apart
                term = term - nnf.log_softmax(_frozen(self.probes[f"{t}_{s}"], flat), dim=1).mean(1)
        return term


def _frozen(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` with the weights detached, as plain functions (no module call, so no Opacus hook)."""
    for layer in layers:
        if isinstance(layer, nn.Linear):
            bias = None if layer.bias is None else layer.bias.detach()
            x = nnf.linear(x, layer.weight.detach(), bias)
        elif isinstance(layer, nn.ReLU):
            x = nnf.relu(x)
        else:
            raise TypeError(f"frozen adversary: no functional form for {type(layer).__name__}")
    return x
