"""Public reference pairs for the release gate: data the device may probe that is not its own.

A device's own pairs are a poor place to look for a leak when its labels are skewed (Dirichlet or
pathological partitions): with few classes on the device, chance is high and the other task's label
varies little, so a probe on its own pairs cannot see what an attacker who learns from every device's
labelled releases reads. The gate therefore also probes reference pairs drawn as the dataset's test
split is (other pairs of the same public test items, or fresh synthetic images), which hold every
class. Which pairs is the device's own secret draw: the server knows the items, not the pairs probed.
The embedded digits and the synthetic set can be built on any device (no file is read); MNIST-format
pairs and image files only where the device has them on disk.

The reference is public to the server (it holds the test items), so probing it tells the server nothing
about the device. It is no defence on its own against weights crafted to behave on exactly these images
(the server knows them); the probe of the device's own pairs stays for that. A reference whose images
or tasks do not match the device's (a server naming another dataset) is not used: the gate then probes
the device's own pairs only, as without a reference.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..config import DataConfig
from . import load_dataset
from .digits import digit_sources
from .multitask import MultiTaskDataset
from .pairs import PairSources, compose_pairs
from .synthetic import load_synthetic

_BUILT_ANYWHERE = ("digits", "synthetic")


@lru_cache(maxsize=2)
def _test_sources(data_json: str, seed: int) -> PairSources:
    """The pair datasets' test items, split as the server splits them (the split is public, not noise)."""
    data = DataConfig.model_validate_json(data_json)
    if data.name == "digits":
        return digit_sources(data.test_fraction, np.random.default_rng(seed))
    from .mnist_pairs import mnist_sources

    assert data.root is not None
    return mnist_sources(data.root)


@lru_cache(maxsize=2)
def _file_test_split(data_json: str, seed: int) -> MultiTaskDataset:
    return load_dataset(DataConfig.model_validate_json(data_json), seed).test


def _draw(data: DataConfig, seed: int, rng: np.random.Generator) -> MultiTaskDataset:
    """Reference pairs drawn as the test split is, with the device's own randomness: the server knows the
    items, not which pairs (or synthetic images) a device probes. Files have one fixed test split; the
    gate's secret subsample of it is the only draw."""
    if data.name in ("digits", "mnist_pairs"):
        src = _test_sources(data.model_dump_json(), seed)
        return compose_pairs(src, src.test, data.test_pairs, rng)
    if data.name == "synthetic":
        test = data.test_pairs
        return load_synthetic(1, test, data.synthetic_tasks, data.side(), data.synthetic_correlation, rng).test
    return _file_test_split(data.model_dump_json(), seed)


def reference_pairs(
    data: DataConfig, seed: int, like: MultiTaskDataset, generator: torch.Generator
) -> MultiTaskDataset | None:
    """Reference pairs of ``data`` if this device can build them and they match ``like`` (the device's own
    pairs: image shape and tasks), else None. ``seed`` splits the public items as the server does;
    ``generator`` (the device's secret randomness) draws the pairs."""
    if data.name not in _BUILT_ANYWHERE and (data.root is None or not data.root.exists()):
        return None
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    reference = _draw(data, seed, rng)
    same_tasks = [(t.name, t.num_classes) for t in reference.tasks] == [(t.name, t.num_classes) for t in like.tasks]
    if reference.image_shape != like.image_shape or not same_tasks:
        return None
    return reference
