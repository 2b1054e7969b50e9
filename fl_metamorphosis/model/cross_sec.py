"""Cross-SEC: cross-task channel squeeze-excitation.

For a shared feature F with C channels (a C-vector or a C x H x W map):

    z       = squeeze(F)                      (the vector itself, or global average pooling of a map)
    h       = ReLU(W1 z + b1)                 (shared bottleneck of C / r units)
    l_o     = W2_o h + b2_o                   for o in {none, task_1, ..., task_T}
    a_o,c   = softmax_o(l_o,c / tau)          (per channel, across the options: the "cross" part)
    F_t     = a_t * F                         (each task's own feature)

The softmax across tasks makes the tasks compete for every channel, and the extra "none" option lets a
channel go to no task at all, so a channel useful to no one is dropped rather than shared.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossSEC(nn.Module):
    def __init__(self, channels: int, num_tasks: int, reduction: int = 4, temperature: float = 1.0):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.num_tasks = num_tasks
        self.temperature = temperature
        self.squeeze_fc = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, (num_tasks + 1) * channels)  # one logit row per option

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Per-task channel attention ``[B, T, C]`` (the "none" option dropped); rows sum to <= 1."""
        z = features.mean(dim=(2, 3)) if features.ndim == 4 else features
        logits = self.excite(torch.relu(self.squeeze_fc(z)))
        logits = logits.view(z.shape[0], self.num_tasks + 1, z.shape[1])
        return torch.softmax(logits / self.temperature, dim=1)[:, 1:]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the task features ``[B, T, *F.shape[1:]]`` and the attention ``[B, T, C]``."""
        a = self.attention(features)
        shaped = a.view(*a.shape, *([1] * (features.ndim - 2)))
        return shaped * features.unsqueeze(1), a
