"""Task heads. A head maps one task's (released) feature to that task's output.

The interface is ``TaskHead``: ``forward(feature) -> output`` and ``loss(output, target)`` per sample,
so dense heads (segmentation, depth) can join later with their own output and loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as nnf


class TaskHead(nn.Module):
    """Base class: a head with a per-sample loss (no reduction; callers reduce)."""

    def per_sample_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ClassificationHead(TaskHead):
    """Flatten, one hidden layer, logits."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.net(feature)

    def per_sample_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nnf.cross_entropy(output, target, reduction="none")

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=1)
