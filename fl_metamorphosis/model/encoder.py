"""The shared on-device encoder: a small GroupNorm CNN (Opacus-compatible, no BatchNorm)."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Conv-GroupNorm-ReLU stages (the 2nd and later with stride 2), then optionally a linear projection.

    With ``feature_map=False`` (default) F is a C-vector: a fully connected stage mixes every location,
    so one channel can specialise on one task. Cross-SEC over a convolutional map cannot split tasks that
    live in different image regions, because every channel responds everywhere (docs/method.md).
    """

    def __init__(
        self,
        in_channels: int,
        image_hw: tuple[int, int],
        channels: list[int],
        groups: int,
        feature_dim: int,
        feature_map: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, (h, w) = in_channels, image_hw
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.GroupNorm(groups, c), nn.ReLU()]
            c_in = c
            if stride == 2:
                h, w = (h + 1) // 2, (w + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.feature_map = feature_map
        if feature_map:
            self.project = nn.Conv2d(c_in, feature_dim, 1)
        else:
            self.project = nn.Linear(c_in * h * w, feature_dim)
        self.out_shape = (feature_dim, h, w) if feature_map else (feature_dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.project(z if self.feature_map else z.flatten(1))
