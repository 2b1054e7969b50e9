"""What runs on the device: encoder plus a feature-generation method, one feature per task.

``universal`` gives every task the same shared feature F; ``metamorphosis`` gives task t its own
``F_t = a_t * F`` from Cross-SEC. Both return ``features [B, T, ...]`` and ``attention [B, T, C]`` (all
ones for universal) so the training loop and the audit treat the methods alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Method, ModelConfig
from .cross_sec import CrossSEC
from .encoder import Encoder
from .heads import ClassificationHead


class FeatureGenerator(nn.Module):
    def __init__(self, method: Method, image_shape: tuple[int, int, int], num_tasks: int, cfg: ModelConfig):
        super().__init__()
        self.method = method
        self.num_tasks = num_tasks
        c, h, w = image_shape
        self.encoder = Encoder(c, (h, w), cfg.channels, cfg.groups, cfg.feature_dim, cfg.feature_map)
        self.cross_sec = (
            CrossSEC(cfg.feature_dim, num_tasks, cfg.se_reduction, cfg.temperature)
            if method == "metamorphosis"
            else None
        )

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.encoder.out_shape

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder(x)
        if self.cross_sec is not None:
            return self.cross_sec(f)
        tasks = f.unsqueeze(1).expand(-1, self.num_tasks, *f.shape[1:])
        return tasks, torch.ones(f.shape[0], self.num_tasks, f.shape[1], device=f.device)


def build_heads(feature_shape: tuple[int, ...], num_classes: list[int], cfg: ModelConfig) -> nn.ModuleList:
    """One classification head per task, each reading only its own task's feature."""
    n_in = math.prod(feature_shape)
    return nn.ModuleList(ClassificationHead(n_in, k, cfg.head_hidden) for k in num_classes)
