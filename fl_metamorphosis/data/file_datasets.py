"""Image datasets on disk (a folder plus a CSV, CelebA, UTKFace) as train and test splits.

``folder_layout.py``, ``celeba.py`` and ``utkface.py`` read each layout's labels and ``image_cache.py`` decodes
the images once into a uint8 cache; this module turns them into splits: the layout's own split when it has one
(CelebA's partition file, a CSV split column; validation rows are left out), else a seeded hold-out of
``data.test_fraction``, of people rather than images when identities are known, so that no face in the test split
was trained on. Then at most ``data.train_pairs`` / ``data.test_pairs`` rows of each, a seeded subsample.

Images stay uint8 (often a memory map of the cache) until a dataset is built from chosen rows: a device
converts its own few hundred images, not the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..config import DataConfig
from .celeba import read_celeba
from .folder_layout import read_folder
from .image_cache import decode_images
from .labelled_files import DatasetFileError, LabelledFiles
from .multitask import MultiTaskDataset, TaskSpec, TrainTestSplit
from .utkface import read_utkface


@dataclass(frozen=True)
class FileRows:
    """A decoded dataset and which of its rows are the train and test splits."""

    images: np.ndarray  # uint8 [M, C, S, S]
    labels: np.ndarray  # int64 [M, T]
    tasks: list[TaskSpec]
    train: np.ndarray  # row indices
    test: np.ndarray
    identity: np.ndarray | None  # [M] person ids, when the layout has them
    skipped: int

    def dataset(self, rows: np.ndarray) -> MultiTaskDataset:
        rows = np.sort(np.asarray(rows))
        x = torch.from_numpy(np.asarray(self.images[rows], dtype=np.float32) / np.float32(255))
        return MultiTaskDataset(x, torch.from_numpy(self.labels[rows]), self.tasks)

    def split(self) -> TrainTestSplit:
        return TrainTestSplit(self.dataset(self.train), self.dataset(self.test), skipped=self.skipped)


def read_labels(cfg: DataConfig) -> LabelledFiles:
    """The configured layout's files and labels (raises ``DatasetFileError`` naming what is wrong)."""
    assert cfg.root is not None  # the config requires it for file datasets
    if cfg.name == "folder":
        return read_folder(
            cfg.root,
            cfg.tasks or [],
            labels_file=cfg.labels_file,
            file_column=cfg.file_column,
            split_column=cfg.split_column,
            identity_column=cfg.identity_column,
            skip_bad=cfg.skip_bad_files,
            allow_outside_root=cfg.allow_paths_outside_root,
        )
    if cfg.name == "celeba":
        return read_celeba(
            cfg.root,
            cfg.task_names() or [],
            skip_bad=cfg.skip_bad_files,
            allow_outside_root=cfg.allow_paths_outside_root,
        )
    return read_utkface(
        cfg.root,
        cfg.task_names() or [],
        age_buckets=cfg.age_buckets,
        skip_bad=cfg.skip_bad_files,
        allow_outside_root=cfg.allow_paths_outside_root,
    )


def _held_out(n: int, identity: np.ndarray | None, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean test mask: ``fraction`` of the people (or of the rows, without identities)."""
    units = np.arange(n) if identity is None else np.unique(identity)
    if len(units) < 2:
        raise DatasetFileError("a train/test hold-out needs at least two images (two people, with identities)")
    held = min(max(1, round(len(units) * fraction)), len(units) - 1)  # both splits keep someone
    if identity is None:
        return np.isin(np.arange(n), rng.permutation(n)[:held])
    test_people = rng.permutation(units)[:held]
    return np.isin(identity, test_people)


def _subsample(rows: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= cap else np.sort(rng.choice(rows, size=cap, replace=False))


@lru_cache(maxsize=2)
def _file_rows(data_json: str, seed: int) -> FileRows:
    cfg = DataConfig.model_validate_json(data_json)
    files = read_labels(cfg)
    images, kept = decode_images(
        files,
        size=cfg.side(),
        colour=cfg.colour,
        cache_dir=cfg.cache_folder(),
        skip_bad=cfg.skip_bad_files,
        max_pixels=cfg.max_image_pixels,
    )
    labels, split = files.labels[kept], files.split[kept]
    identity = None if files.identity is None else files.identity[kept]
    rng = np.random.default_rng(seed)
    if (split == "").all():
        test = _held_out(len(kept), identity, cfg.test_fraction, rng)
        train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    else:
        train_rows, test_rows = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    for name, rows in (("train", train_rows), ("test", test_rows)):
        if len(rows) == 0:
            raise DatasetFileError(f"{files.root}: no {name} images after the split: check the split labels")
    return FileRows(
        images,
        labels,
        files.tasks,
        _subsample(train_rows, cfg.train_pairs, rng),
        _subsample(test_rows, cfg.test_pairs, rng),
        identity,
        files.skipped + len(files.files) - len(kept),
    )


def file_rows(cfg: DataConfig, seed: int) -> FileRows:
    """The decoded dataset and its splits (once per process for a config and seed)."""
    return _file_rows(cfg.model_dump_json(), seed)
