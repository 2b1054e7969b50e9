"""The embedded default: two real handwritten digits side by side (scikit-learn's ``load_digits``).

Task ``left`` is the left digit, task ``right`` the right one; the two are drawn independently, so a
cross-task attack's chance level is 1 / 10. Source digits are split into train and test BEFORE pairing,
so no test image shares a handwritten digit with any training image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .multitask import MultiTaskDataset, TaskSpec, TrainTestSplit

TASKS = [TaskSpec("left", 10), TaskSpec("right", 10)]


def split_sources(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the source digits for train and for test (disjoint, stratification not needed)."""
    order = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _pairs(images: np.ndarray, labels: np.ndarray, sources: np.ndarray, n: int, rng: np.random.Generator):
    left = rng.choice(sources, size=n)
    right = rng.choice(sources, size=n)
    x = np.concatenate([images[left], images[right]], axis=2)  # [n, 8, 16]
    y = np.stack([labels[left], labels[right]], axis=1)
    return torch.from_numpy(x).unsqueeze(1).float(), torch.from_numpy(y).long(), left, right


@lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 source digits as float images in [0, 1] and their labels (read once per process: a
    device composes its pairs on every message). Callers must not modify the arrays.

    scikit-learn is imported here, not at the top: a board that reads its own data folder never needs
    it, and it is a third of a ClientApp process's start-up (Flower starts one per message)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)  # pixels are 0..16


def compose_pairs(sources: np.ndarray, n: int, seed: int | np.random.Generator) -> MultiTaskDataset:
    """``n`` left/right pairs drawn (with replacement) from the given source digits only."""
    images, labels = source_digits()
    rng = np.random.default_rng(seed)
    x, y, *_ = _pairs(images, labels, np.asarray(sources), n, rng)
    return MultiTaskDataset(x, y, TASKS)


def load_digit_pairs(train_pairs: int, test_pairs: int, test_fraction: float, seed: int) -> TrainTestSplit:
    """Compose the left/right digit-pair set; seeded and reproducible."""
    images, labels = source_digits()
    rng = np.random.default_rng(seed)
    train_src, test_src = split_sources(len(labels), test_fraction, rng)
    xtr, ytr, *_ = _pairs(images, labels, train_src, train_pairs, rng)
    xte, yte, *_ = _pairs(images, labels, test_src, test_pairs, rng)
    train = MultiTaskDataset(xtr, ytr, TASKS)
    test = MultiTaskDataset(xte, yte, TASKS)
    train.source_indices = train_src  # type: ignore[attr-defined]  # kept for the leakage test
    test.source_indices = test_src  # type: ignore[attr-defined]
    return TrainTestSplit(train, test)
