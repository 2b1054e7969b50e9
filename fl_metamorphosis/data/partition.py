"""What each device holds: flwr-datasets' partitioners over the training data.

Pair datasets (digits, MNIST-format pairs): the TRAIN source items are partitioned, and each device
composes its own left/right pairs from its own items only, so no item is on two devices and none is in
the server's held-out set (built from the test sources). Dirichlet and pathological partitioning skew
the devices' item classes, and with them both tasks.

Image datasets (synthetic, a folder, CelebA, UTKFace): the training images themselves are partitioned.
Dirichlet and pathological skew by one task's labels (``federated.partition_task``, default the first);
``identity`` gives each device all the images of a few people, as a phone holds its owner's and friends'
faces. A device's local test images are its share of the server's test split.

A device whose share is empty (train or test) is refused here, naming the dataset and the fix, rather than
handed an empty dataset that fails later (an empty batch in training, a mean over nothing in evaluation).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

from ..config import DataConfig, ExperimentConfig, FederatedConfig
from . import MultiTaskDataset, load_dataset
from .digits import digit_sources
from .labelled_files import DatasetFileError
from .pairs import PairSources, compose_pairs

PAIR_DATASETS = ("digits", "mnist_pairs")


def pair_sources(data: DataConfig, seed: int) -> PairSources:
    """The source items, split exactly as the centralized run splits them for this seed."""
    if data.name == "digits":
        return digit_sources(data.test_fraction, np.random.default_rng(seed))
    from .mnist_pairs import mnist_sources

    assert data.root is not None
    return mnist_sources(data.root)


def train_sources(data: DataConfig, seed: int) -> np.ndarray:
    return pair_sources(data, seed).train


def split_by_identity(identity: np.ndarray, num_devices: int, seed: int) -> list[np.ndarray]:
    """Rows per device: the people are dealt out in seeded order, each device gets all of its people's rows."""
    people = np.random.default_rng(seed).permutation(np.unique(identity))
    if len(people) < num_devices:
        raise ValueError(
            f"federated.partitioning='identity' needs at least one person per device: {len(people)} people "
            f"for federated.num_devices={num_devices}"
        )
    return [np.flatnonzero(np.isin(identity, group)) for group in np.array_split(people, num_devices)]


def partition_rows(
    rows: np.ndarray, labels: np.ndarray, identity: np.ndarray | None, fed: FederatedConfig, seed: int
) -> list[np.ndarray]:
    """Which of ``rows`` (with their ``labels`` and people) each device holds."""
    if fed.partitioning == "identity":
        if identity is None:
            raise ValueError("federated.partitioning='identity': this dataset has no identities")
        return [rows[part] for part in split_by_identity(identity, fed.num_devices, seed)]
    table = Dataset.from_dict({"row": rows, "label": labels})
    if fed.partitioning == "iid":
        partitioner = IidPartitioner(num_partitions=fed.num_devices)
    elif fed.partitioning == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=fed.num_devices,
            partition_by="label",
            alpha=fed.dirichlet_alpha,
            min_partition_size=2,
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=fed.num_devices,
            partition_by="label",
            num_classes_per_partition=fed.classes_per_device,
            # "random" (the library's default) lets every device draw the same classes and silently drops
            # the rest; first-deterministic gives device i class i first, so every class is held
            # whenever there are at least as many devices as classes
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    partitioner.dataset = table
    return [np.asarray(partitioner.load_partition(i)["row"]) for i in range(fed.num_devices)]


def _check_device(fed: FederatedConfig, device: int) -> None:
    if not 0 <= device < fed.num_devices:
        raise ValueError(f"partition-id {device} outside [0, federated.num_devices={fed.num_devices})")


@lru_cache(maxsize=4)
def _source_partitions(data_json: str, fed_json: str, seed: int) -> tuple[np.ndarray, ...]:
    data, fed = DataConfig.model_validate_json(data_json), FederatedConfig.model_validate_json(fed_json)
    src = pair_sources(data, seed)
    return tuple(partition_rows(src.train, src.labels[src.train], None, fed, seed))


def device_sources(data: DataConfig, fed: FederatedConfig, device: int, seed: int) -> np.ndarray:
    """Indices of the source items that device ``device`` holds (pair datasets)."""
    if data.name not in PAIR_DATASETS:
        raise ValueError(f"source items exist for {PAIR_DATASETS} only, got data.name={data.name!r}")
    _check_device(fed, device)
    return _source_partitions(data.model_dump_json(), fed.model_dump_json(), seed)[device]


@lru_cache(maxsize=2)
def _synthetic(data_json: str, seed: int):
    return load_dataset(DataConfig.model_validate_json(data_json), seed)


def _train_items(data: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The training rows an image dataset partitions, their labels [n, T] and their people."""
    if data.name == "synthetic":
        labels = _synthetic(data.model_dump_json(), seed).train.labels.numpy()
        return np.arange(len(labels)), labels, None
    from .file_datasets import file_rows

    files = file_rows(data, seed)
    identity = None if files.identity is None else files.identity[files.train]
    return files.train, files.labels[files.train], identity


@lru_cache(maxsize=4)
def _image_partitions(data_json: str, fed_json: str, seed: int) -> tuple[np.ndarray, ...]:
    data, fed = DataConfig.model_validate_json(data_json), FederatedConfig.model_validate_json(fed_json)
    tasks = data.synthetic_tasks if data.name == "synthetic" else data.task_names()
    by = tasks.index(fed.partition_task) if (tasks and fed.partition_task) else 0
    rows, labels, identity = _train_items(data, seed)
    # files on disk are often grouped by class or person: shuffle before the IID shards
    order = np.random.default_rng((seed, 1)).permutation(len(rows))
    people = None if identity is None else identity[order]
    return tuple(partition_rows(rows[order], labels[order, by], people, fed, seed))


def _dataset_name(data: DataConfig) -> str:
    return f"{data.name} dataset" + (f" in {str(data.root)!r}" if data.root is not None else "")


def _require_rows(count: int, what: str, data: DataConfig, fed: FederatedConfig, device: int, fix: str) -> None:
    if count == 0:
        raise DatasetFileError(
            f"device {device} of federated.num_devices={fed.num_devices} gets no {what} from the "
            f"{_dataset_name(data)}: {fix}"
        )


def _image_device(
    data: DataConfig, fed: FederatedConfig, device: int, seed: int
) -> tuple[MultiTaskDataset, MultiTaskDataset]:
    rows = _image_partitions(data.model_dump_json(), fed.model_dump_json(), seed)[device]
    fix = "use fewer devices (federated.num_devices), a larger federated.dirichlet_alpha, or more images"
    _require_rows(len(rows), "training images", data, fed, device, fix)
    test_fix = (
        "its test split holds fewer images than there are devices; use fewer devices (federated.num_devices) or "
        "a larger test split (data.test_pairs, data.test_fraction, or the CSV's split column)"
    )
    if data.name == "synthetic":
        split = _synthetic(data.model_dump_json(), seed)
        test_rows = torch.arange(device, len(split.test), fed.num_devices)
        _require_rows(len(test_rows), "test images", data, fed, device, test_fix)
        return split.train.subset(torch.from_numpy(np.sort(rows))), split.test.subset(test_rows)
    from .file_datasets import file_rows

    files = file_rows(data, seed)
    test_rows = files.test[device :: fed.num_devices]
    _require_rows(len(test_rows), "test images", data, fed, device, test_fix)
    return files.dataset(rows), files.dataset(test_rows)


def device_datasets(
    data: DataConfig, fed: FederatedConfig, device: int, seed: int, test_share: float = 0.2
) -> tuple[MultiTaskDataset, MultiTaskDataset]:
    """Device ``device``'s local (train, test) data.

    Pair datasets: pairs composed from the device's own, disjoint source items; it trains on an equal
    share of ``data.train_pairs``, and its local test pairs come from the ``test_share`` of its items it
    never trains on (all of them when it holds a single item). Image datasets: the device's partition of
    the training images, and its share of the test split.
    """
    _check_device(fed, device)
    if data.name not in PAIR_DATASETS:
        return _image_device(data, fed, device, seed)
    src = pair_sources(data, seed)
    sources = device_sources(data, fed, device, seed)
    fix = "use fewer devices (federated.num_devices) or a larger federated.dirichlet_alpha"
    _require_rows(len(sources), "source items", data, fed, device, fix)
    rng = np.random.default_rng((seed, device))
    order = rng.permutation(sources)
    n_test = int(round(len(order) * test_share)) if len(order) > 1 else 0
    train_src, test_src = order[n_test:], (order[:n_test] if n_test else order)
    n_train = max(1, data.train_pairs // fed.num_devices)
    train = compose_pairs(src, train_src, n_train, rng)
    test = compose_pairs(src, test_src, max(1, min(n_train // 4, data.test_pairs)), rng)
    return train, test


def federated_training_pairs(cfg: ExperimentConfig) -> MultiTaskDataset:
    """Every device's training pairs together: the members of a federated run (for its audit)."""
    parts = [device_datasets(cfg.data, cfg.federated, d, cfg.train.seed)[0] for d in range(cfg.federated.num_devices)]
    return MultiTaskDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), parts[0].tasks)
