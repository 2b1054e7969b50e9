"""What runs on the device: encoder plus a feature-generation method, one feature per task.

How F becomes task features depends on the method (``fl_metamorphosis.methods``): ``shared`` gives every
task the same F; ``cross_sec`` gives task t its own ``F_t = a_t * F`` from Cross-SEC; ``projection``
gives task t a learned linear map of F's channels. All return ``features [B, T, ...]`` and
``attention [B, T, C]`` (all ones unless Cross-SEC) so training, release and audit treat methods alike.
Methods trained against an adversary carry it here too, so DP-SGD trains it with the encoder; it is
never used at release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import Method, ModelConfig
from ..methods import method_spec
from .adversary import Adversary
from .cross_sec import CrossSEC
from .encoder import Encoder
from .heads import ClassificationHead


class TaskProjections(nn.Module):
    """One linear map of F's channels per task (applied per location when F is a map)."""

    def __init__(self, channels: int, num_tasks: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(channels, channels) for _ in range(num_tasks))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        last = f.movedim(1, -1)
        return torch.stack([m(last).movedim(-1, 1) for m in self.maps], dim=1)


class FeatureGenerator(nn.Module):
    def __init__(
        self,
        method: Method,
        image_shape: tuple[int, int, int],
        num_tasks: int,
        cfg: ModelConfig,
        num_classes: Sequence[int] | None = None,
    ):
        super().__init__()
        self.method = method
        self.num_tasks = num_tasks
        spec = method_spec(method)
        c, h, w = image_shape
        self.encoder = Encoder(c, (h, w), cfg.channels, cfg.groups, cfg.feature_dim, cfg.feature_map)
        self.cross_sec = (
            CrossSEC(cfg.feature_dim, num_tasks, cfg.se_reduction, cfg.temperature)
            if spec.split == "cross_sec"
            else None
        )
        self.projections = TaskProjections(cfg.feature_dim, num_tasks) if spec.split == "projection" else None
        self.adversary = None
        if spec.adversary:
            if num_classes is None or len(num_classes) != num_tasks:
                raise ValueError(f"method {method!r} trains adversaries: pass num_classes for all {num_tasks} tasks")
            self.adversary = Adversary(self.encoder.out_shape, list(num_classes), image_shape, cfg.adversary_hidden)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.encoder.out_shape

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder(x)
        if self.cross_sec is not None:
            return self.cross_sec(f)
        ones = torch.ones(f.shape[0], self.num_tasks, f.shape[1], device=f.device)
        if self.projections is not None:
            return self.projections(f), ones
        return f.unsqueeze(1).expand(-1, self.num_tasks, *f.shape[1:]), ones


def build_heads(feature_shape: tuple[int, ...], num_classes: list[int], cfg: ModelConfig) -> nn.ModuleList:
    """One classification head per task, each reading only its own task's feature."""
    n_in = math.prod(feature_shape)
    return nn.ModuleList(ClassificationHead(n_in, k, cfg.head_hidden) for k in num_classes)
