"""Which source digits each device holds: flwr-datasets' partitioners over the TRAIN source digits.

Each device then composes its own left/right pairs from its own digits only, so no handwritten digit is
on two devices, and none of them is in the server's held-out set (built from the test sources).
Dirichlet and pathological partitioning skew the devices' digit classes, and with them both tasks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

from ..config import DataConfig, ExperimentConfig, FederatedConfig
from ..data import MultiTaskDataset, load_dataset
from ..data.digits import compose_pairs, source_digits, split_sources


def train_sources(data: DataConfig, seed: int) -> np.ndarray:
    """The train source digits, exactly as the centralized split draws them for this seed."""
    _, labels = source_digits()
    train, _ = split_sources(len(labels), data.test_fraction, np.random.default_rng(seed))
    return train


@lru_cache(maxsize=8)
def _partitions(num_devices: int, scheme: str, alpha: float, k: int, test_fraction: float, seed: int):
    _, labels = source_digits()
    sources = train_sources(DataConfig(test_fraction=test_fraction), seed)
    table = Dataset.from_dict({"source": sources, "label": labels[sources]})
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_devices)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_devices, partition_by="label", alpha=alpha, min_partition_size=2, seed=seed
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_devices, partition_by="label", num_classes_per_partition=k, seed=seed
        )
    partitioner.dataset = table
    return tuple(np.asarray(partitioner.load_partition(i)["source"]) for i in range(num_devices))


def device_sources(data: DataConfig, fed: FederatedConfig, device: int, seed: int) -> np.ndarray:
    """Indices of the source digits that device ``device`` holds."""
    if data.name != "digits":
        raise ValueError(f"federated partitioning needs data.name='digits', got {data.name!r}")
    if not 0 <= device < fed.num_devices:
        raise ValueError(f"partition-id {device} outside [0, federated.num_devices={fed.num_devices})")
    parts = _partitions(
        fed.num_devices, fed.partitioning, fed.dirichlet_alpha, fed.classes_per_device, data.test_fraction, seed
    )
    return parts[device]


@lru_cache(maxsize=2)
def _synthetic(data_json: str, seed: int):
    return load_dataset(DataConfig.model_validate_json(data_json), seed)


def _synthetic_share(data: DataConfig, fed: FederatedConfig, device: int, seed: int):
    """An IID share of the synthetic set: every ``num_devices``-th image of its train and test splits.
    Its factors are drawn independently per image, so there is no source to skew by."""
    if fed.partitioning != "iid":
        raise ValueError(
            f"data.name='synthetic' supports federated.partitioning='iid' only, got {fed.partitioning!r}: "
            "use data.name='digits' for Dirichlet or pathological partitions"
        )
    if not 0 <= device < fed.num_devices:
        raise ValueError(f"partition-id {device} outside [0, federated.num_devices={fed.num_devices})")
    split = _synthetic(data.model_dump_json(), seed)
    train = split.train.subset(torch.arange(device, len(split.train), fed.num_devices))
    # local test images: the device's share of the test split (the server keeps the whole split)
    return train, split.test.subset(torch.arange(device, len(split.test), fed.num_devices))


def device_datasets(
    data: DataConfig, fed: FederatedConfig, device: int, seed: int, test_share: float = 0.2
) -> tuple[MultiTaskDataset, MultiTaskDataset]:
    """Device ``device``'s local (train, test) pairs, each composed from its own, disjoint source digits.

    The device trains on an equal share of ``data.train_pairs``; its local test pairs come from the
    ``test_share`` of its digits it never trains on (all of them when it holds a single digit). On the
    synthetic set a device holds an IID share of the images instead.
    """
    if data.name == "synthetic":
        return _synthetic_share(data, fed, device, seed)
    sources = device_sources(data, fed, device, seed)
    if len(sources) == 0:
        raise ValueError(f"device {device} received no source digits: use fewer devices or a larger alpha")
    rng = np.random.default_rng((seed, device))
    order = rng.permutation(sources)
    n_test = int(round(len(order) * test_share)) if len(order) > 1 else 0
    train_src, test_src = order[n_test:], (order[:n_test] if n_test else order)
    n_train = max(1, data.train_pairs // fed.num_devices)
    train = compose_pairs(train_src, n_train, rng)
    test = compose_pairs(test_src, max(1, min(n_train // 4, data.test_pairs)), rng)
    return train, test


def federated_training_pairs(cfg: ExperimentConfig) -> MultiTaskDataset:
    """Every device's training pairs together: the members of a federated run (for its audit)."""
    parts = [device_datasets(cfg.data, cfg.federated, d, cfg.train.seed)[0] for d in range(cfg.federated.num_devices)]
    return MultiTaskDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), parts[0].tasks)
