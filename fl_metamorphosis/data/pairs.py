"""Two single-item images side by side, one task each: the digit pairs and the MNIST-format pairs.

Sources (single digits, garments, characters) are split into train and test BEFORE pairing, so no test
image shares an item with any training image; the two items of a pair are drawn independently, so a
cross-task attack's chance level is the most frequent class's rate. The sources stay in their stored
dtype (uint8 for IDX files) and are scaled to [0, 1] only for the pairs drawn: 70,000 MNIST items as
float32 would be 220 MB in every device process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .multitask import MultiTaskDataset, TaskSpec, TrainTestSplit


@dataclass(frozen=True)
class PairSources:
    """The single items pairs are composed from, and which of them are train and test sources."""

    images: np.ndarray  # [N, H, W], any numeric dtype; pixel = value * scale in [0, 1]
    labels: np.ndarray  # [N] int64
    train: np.ndarray  # indices of the train sources
    test: np.ndarray  # indices of the test sources
    scale: float
    num_classes: int

    @property
    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec("left", self.num_classes), TaskSpec("right", self.num_classes)]


def compose_pairs(src: PairSources, sources: np.ndarray, n: int, seed: int | np.random.Generator) -> MultiTaskDataset:
    """``n`` left/right pairs drawn (with replacement) from the given source items only."""
    rng = np.random.default_rng(seed)
    sources = np.asarray(sources)
    left, right = rng.choice(sources, size=n), rng.choice(sources, size=n)
    x = np.concatenate([src.images[left], src.images[right]], axis=2).astype(np.float32) * np.float32(src.scale)
    y = np.stack([src.labels[left], src.labels[right]], axis=1)
    return MultiTaskDataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).long(), src.tasks)


def load_pairs(src: PairSources, train_pairs: int, test_pairs: int, rng: np.random.Generator) -> TrainTestSplit:
    """The train pairs from the train sources, then the test pairs from the test sources (seeded)."""
    train = compose_pairs(src, src.train, train_pairs, rng)
    test = compose_pairs(src, src.test, test_pairs, rng)
    train.source_indices = src.train  # type: ignore[attr-defined]  # kept for the leakage test
    test.source_indices = src.test  # type: ignore[attr-defined]
    return TrainTestSplit(train, test)
