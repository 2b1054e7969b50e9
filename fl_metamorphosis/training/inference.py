"""Released features and predictions of a trained model, batch by batch, without gradients."""

from __future__ import annotations

import torch
from torch import nn

from ..config import FeatureDPConfig
from ..data import MultiTaskDataset
from ..privacy import release
from ..privacy.randomness import Randomness

# Small enough that a batch's activations stay in the CPU's cache (1,024 images at a time was several times
# slower per image: docs/federated.md). The released values, seeded noise included, are those of 1,024
# (tests/fl_metamorphosis/training/test_training.py).
FORWARD_BATCH = 256


@torch.no_grad()
def released_features(
    generator: nn.Module,
    images: torch.Tensor,
    feature_dp: FeatureDPConfig,
    randomness: Randomness | int,
    batch_size: int = FORWARD_BATCH,
) -> torch.Tensor:
    """What a device would send for ``images``: ``[N, T, ...]`` task features after clip + noise. An int
    seeds the noise (an auditor's simulated releases, reproducible); a device passes its secret Randomness."""
    generator.eval()
    rng = Randomness.seeded(randomness) if isinstance(randomness, int) else randomness
    out = []
    for start in range(0, images.shape[0], batch_size):
        feats, _ = generator(images[start : start + batch_size])
        out.append(release(feats, feature_dp, rng))
    return torch.cat(out)


@torch.no_grad()
def task_accuracy(heads: nn.ModuleList, released: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Each head's accuracy on its own task's released features."""
    heads.eval()
    return [float((head.predict(head(released[:, t])) == labels[:, t]).float().mean()) for t, head in enumerate(heads)]


def evaluate(
    generator: nn.Module, heads: nn.ModuleList, data: MultiTaskDataset, feature_dp: FeatureDPConfig, seed: int
) -> dict[str, float]:
    feats = released_features(generator, data.images, feature_dp, seed)
    return dict(zip(data.task_names, task_accuracy(heads, feats, data.labels), strict=False))
