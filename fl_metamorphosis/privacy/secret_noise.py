"""The one place a device's DP-SGD noise is drawn: Opacus' optimizers with ``add_noise`` replaced.

Opacus draws its Gaussian noise from torch's generator (or ``torchcsprng`` in secure mode, which has no
build for current torch). ``SecretNoise`` draws it from the caller's ``Randomness`` instead (by default
the OS CSPRNG, ``randomness.py``); both of the device's optimizers (``dp_sgd.SecretNoiseDPOptimizer``,
``ghost_clipping.GhostClippingDPOptimizer``) mix it in ahead of their Opacus base.
"""

from __future__ import annotations

import torch
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from .randomness import Randomness


class SecretNoise:
    """Mixin for an Opacus ``DPOptimizer``: its noise comes from ``randomness``."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, randomness: Randomness, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.randomness = randomness

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = self.randomness.normal(p.summed_grad.shape, std, dtype=p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)
