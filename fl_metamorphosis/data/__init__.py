"""Multi-task datasets: the embedded digit pairs, a synthetic generator, MNIST-format pairs and image
files on disk (docs/data.md), and the loader by config.

The dataset classes load on first use (PEP 562), and each loader with its dataset: ``deploy device``
reads its data folder's partition id through ``device_folder`` and then supervises the SuperNode for as
long as the board runs: torch would sit in that process's memory for nothing (docs/deploy.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import FILE_DATASETS, DataConfig
from ..lazy_names import lazy_names

if TYPE_CHECKING:
    from .multitask import MultiTaskDataset, TaskSpec, TrainTestSplit

_HOMES = {"MultiTaskDataset": "multitask", "TaskSpec": "multitask", "TrainTestSplit": "multitask"}
__all__ = ["MultiTaskDataset", "TaskSpec", "TrainTestSplit", "load_dataset", "prepare_dataset"]


__getattr__ = lazy_names(__name__, _HOMES)


def load_dataset(cfg: DataConfig, seed: int) -> TrainTestSplit:
    """The train/test split a config names."""
    if cfg.name == "digits":
        from .digits import load_digit_pairs

        return load_digit_pairs(cfg.train_pairs, cfg.test_pairs, cfg.test_fraction, seed)
    if cfg.name == "synthetic":
        from .synthetic import load_synthetic

        return load_synthetic(
            cfg.train_pairs, cfg.test_pairs, cfg.synthetic_tasks, cfg.side(), cfg.synthetic_correlation, seed
        )
    if cfg.name == "mnist_pairs":
        from .mnist_pairs import load_mnist_pairs

        assert cfg.root is not None  # required by the config
        return load_mnist_pairs(cfg.root, cfg.train_pairs, cfg.test_pairs, seed)
    assert cfg.name in FILE_DATASETS
    from .file_datasets import file_rows  # Pillow only where files are read

    return file_rows(cfg, seed).split()


def prepare_dataset(cfg: DataConfig, seed: int) -> None:
    """Check a dataset on disk and build its decoded cache once, before a federation starts: a layout
    error then stops the launch at once, and the server and every device do not decode the same files
    at the same time."""
    if cfg.name == "mnist_pairs":
        from .mnist_pairs import mnist_sources

        assert cfg.root is not None
        mnist_sources(cfg.root)
    elif cfg.name in FILE_DATASETS:
        from .file_datasets import file_rows

        file_rows(cfg, seed)
