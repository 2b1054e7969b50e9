"""Multi-task datasets: the embedded digit pairs, a synthetic generator, and the loader by config."""

from __future__ import annotations

from ..config import DataConfig
from .digits import load_digit_pairs
from .multitask import MultiTaskDataset, TaskSpec, TrainTestSplit
from .synthetic import load_synthetic

__all__ = ["MultiTaskDataset", "TaskSpec", "TrainTestSplit", "load_dataset"]


def load_dataset(cfg: DataConfig, seed: int) -> TrainTestSplit:
    """The train/test split a config names."""
    if cfg.name == "digits":
        return load_digit_pairs(cfg.train_pairs, cfg.test_pairs, cfg.test_fraction, seed)
    return load_synthetic(
        cfg.train_pairs, cfg.test_pairs, cfg.synthetic_tasks, cfg.image_size, cfg.synthetic_correlation, seed
    )
