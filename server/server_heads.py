"""Server-side task heads: each head learns from its own task's released features only."""

from __future__ import annotations

import torch
from torch import nn


def train_head(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float, seed: int, batch: int = 256
) -> float:
    """Train one head on (released feature, label) pairs of its task; return the last epoch's mean loss."""
    if len(features) == 0:
        return float("nan")
    torch.manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    head.train()
    mean = float("nan")
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(features)).split(batch):
            loss = head.per_sample_loss(head(features[idx]), labels[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        mean = total / len(features)
    return mean
