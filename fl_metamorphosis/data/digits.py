"""The embedded default: two real handwritten digits side by side (scikit-learn's ``load_digits``).

Task ``left`` is the left digit, task ``right`` the right one (``pairs.py``). The 1,797 source digits
are split into train and test sources by ``data.test_fraction``, seeded.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .multitask import TrainTestSplit
from .pairs import PairSources, load_pairs


def split_sources(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the source digits for train and for test (disjoint, stratification not needed)."""
    order = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


@lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 source digits as uint8 images in 0..16 and their labels (read once per process: a
    device composes its pairs on every message). Callers must not modify the arrays.

    scikit-learn is imported here, not at the top: a board that reads its own data folder never needs
    it, and it is a third of a ClientApp process's start-up (Flower starts one per message)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.uint8), digits.target.astype(np.int64)


def digit_sources(test_fraction: float, rng: np.random.Generator) -> PairSources:
    """The digits as pair sources; the train/test split is the first draw from ``rng``."""
    images, labels = source_digits()
    train, test = split_sources(len(labels), test_fraction, rng)
    return PairSources(images, labels, train, test, scale=1 / 16, num_classes=10)  # pixels are 0..16


def load_digit_pairs(train_pairs: int, test_pairs: int, test_fraction: float, seed: int) -> TrainTestSplit:
    """Compose the left/right digit-pair set; seeded and reproducible."""
    rng = np.random.default_rng(seed)
    return load_pairs(digit_sources(test_fraction, rng), train_pairs, test_pairs, rng)
