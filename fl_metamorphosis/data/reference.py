"""Public reference pairs for the release gate: data the device may probe that is not its own.

A device's own pairs are a poor place to look for a leak when its labels are skewed (Dirichlet or
pathological partitions): with few classes on the device, chance is high and the other task's label
varies little, so a probe on its own pairs cannot see what an attacker who learns from every device's
labelled releases reads. The gate therefore also probes reference pairs drawn from the dataset's test
split, which holds every class: the embedded digits and the synthetic set can be built on any device
(no file is read), MNIST-format pairs and image files only where the device has them on disk.

The reference is public to the server (it holds the test split), so probing it tells the server nothing
about the device. It is no defence on its own against weights crafted to behave on exactly these images
(the server knows them); the probe of the device's own pairs stays for that. A reference whose images
or tasks do not match the device's (a server naming another dataset) is not used: the gate then probes
the device's own pairs only, as without a reference.
"""

from __future__ import annotations

from functools import lru_cache

from ..config import DataConfig
from . import load_dataset
from .multitask import MultiTaskDataset

_BUILT_ANYWHERE = ("digits", "synthetic")


@lru_cache(maxsize=2)
def _test_split(data_json: str, seed: int) -> MultiTaskDataset:
    return load_dataset(DataConfig.model_validate_json(data_json), seed).test


def reference_pairs(data: DataConfig, seed: int, like: MultiTaskDataset) -> MultiTaskDataset | None:
    """The test split of ``data`` if this device can build it and it matches ``like`` (the device's own
    pairs: image shape and tasks), else None."""
    if data.name not in _BUILT_ANYWHERE and (data.root is None or not data.root.exists()):
        return None
    reference = _test_split(data.model_dump_json(), seed)
    same_tasks = [(t.name, t.num_classes) for t in reference.tasks] == [(t.name, t.num_classes) for t in like.tasks]
    if reference.image_shape != like.image_shape or not same_tasks:
        return None
    return reference
