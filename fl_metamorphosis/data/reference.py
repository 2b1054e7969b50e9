"""Public reference pairs for the release gate: data the device may probe that is not its own.

A device's own pairs are a poor place to look for a leak when its labels are skewed (Dirichlet or
pathological partitions): with few classes on the device, chance is high and the other task's label
varies little, so a probe on its own pairs cannot see what an attacker who learns from every device's
labelled releases reads. The gate therefore also probes reference pairs drawn as the dataset's test
split is (other pairs of the same public test items, or fresh synthetic images), which hold every
class. The embedded digits and the synthetic set can be built on any device (no file is read);
MNIST-format pairs and image files only where the device has them on disk.

The reference is public to the server (it holds the test items), so probing it tells the server nothing
about the device. It is no defence on its own against weights crafted to behave on exactly these images
(the server knows them); the probe of the device's own pairs stays for that. A reference whose images
or tasks do not match the device's (a server naming another dataset) is not used: the gate then probes
the device's own pairs only, as without a reference.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..config import DataConfig
from . import load_dataset
from .digits import digit_sources
from .multitask import MultiTaskDataset
from .pairs import compose_pairs
from .synthetic import load_synthetic

_BUILT_ANYWHERE = ("digits", "synthetic")


@lru_cache(maxsize=2)
def _test_split(data_json: str, seed: int) -> MultiTaskDataset:
    """Pairs drawn as the test split is (from the test sources, or the generator), without composing the
    training set first: a board starts a process per message and pays this each time."""
    data = DataConfig.model_validate_json(data_json)
    if data.name in ("digits", "mnist_pairs"):
        if data.name == "digits":
            src = digit_sources(data.test_fraction, np.random.default_rng(seed))
        else:
            from .mnist_pairs import mnist_sources

            assert data.root is not None
            src = mnist_sources(data.root)
        return compose_pairs(src, src.test, data.test_pairs, np.random.default_rng((seed, 1)))
    if data.name == "synthetic":
        return load_synthetic(
            1, data.test_pairs, data.synthetic_tasks, data.side(), data.synthetic_correlation, seed + 1
        ).test
    return load_dataset(data, seed).test


def reference_pairs(data: DataConfig, seed: int, like: MultiTaskDataset) -> MultiTaskDataset | None:
    """Reference pairs of ``data`` if this device can build them and they match ``like`` (the device's own
    pairs: image shape and tasks), else None."""
    if data.name not in _BUILT_ANYWHERE and (data.root is None or not data.root.exists()):
        return None
    reference = _test_split(data.model_dump_json(), seed)
    same_tasks = [(t.name, t.num_classes) for t in reference.tasks] == [(t.name, t.num_classes) for t in like.tasks]
    if reference.image_shape != like.image_shape or not same_tasks:
        return None
    return reference
