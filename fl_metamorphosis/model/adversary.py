"""Gradient-reversal adversaries for the ``adversarial`` method (DeepObfuscator-style).

For each task feature F_t the adversary tries to predict every OTHER task's label and to rebuild the
input. A gradient-reversal layer sits between F_t and the adversary: one backward pass trains the
adversary to win and pushes the encoder, with the gradient's sign flipped, to make it lose. Every term
is per sample, so the adversary trains inside the same DP-SGD module as the encoder.
"""

from __future__ import annotations

import math

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

    def per_sample_loss(self, features: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample ``[B]``: the adversaries' losses, seen by the encoder through reversed gradients.

        Minimising the returned value trains the adversaries to predict other tasks and rebuild the input
        while the encoder (behind the reversal) learns to defeat them.
        """
        total = features.new_zeros(features.shape[0])
        target = inputs.flatten(1)
        for t, decoder in enumerate(self.decoders):
            f = reverse_gradient(features[:, t].flatten(1))
            total = total + nnf.mse_loss(decoder(f), target, reduction="none").mean(1)
            for s in range(len(self.num_classes)):
                if s != t:
                    total = total + nnf.cross_entropy(self.probes[f"{t}_{s}"](f), labels[:, s], reduction="none")
        return total
