"""A real device's own data: one folder with its train and test pairs, copied onto the board once.

``deploy prepare-data`` writes one folder per device (``device-N/``) with ``pairs.npz`` (images as float32
in [0, 1], one label column per task; read with ``allow_pickle=False``, so the file holds arrays only)
and ``dataset.json`` (its partition id, the tasks, the counts). The ClientApp reads the folder named by
its node config (``data-dir``) instead of building a simulated partition.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .multitask import MultiTaskDataset, TaskSpec

PAIRS, META = "pairs.npz", "dataset.json"


class DeviceDataError(ValueError):
    """A device data folder that is missing or not of the expected layout; the message says which."""


def write_device_folder(folder: Path, partition_id: int, train: MultiTaskDataset, test: MultiTaskDataset) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / PAIRS,
        train_images=train.images.numpy().astype(np.float32),
        train_labels=train.labels.numpy(),
        test_images=test.images.numpy().astype(np.float32),
        test_labels=test.labels.numpy(),
    )
    meta = {
        "partition_id": partition_id,
        "tasks": [{"name": t.name, "num_classes": t.num_classes} for t in train.tasks],
        "train_pairs": len(train),
        "test_pairs": len(test),
    }
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_partition_id(folder: Path) -> int:
    return int(_meta(Path(folder))["partition_id"])


def _meta(folder: Path) -> dict:
    if not folder.is_dir():
        raise DeviceDataError(
            f"device data folder {str(folder)!r} does not exist: copy the device's folder from "
            "`metamorphosis deploy prepare-data` there, or fix node config data-dir"
        )
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise DeviceDataError(
            f"{folder / META}: missing or not JSON ({err}); expected the layout of "
            "`metamorphosis deploy prepare-data` (dataset.json + pairs.npz)"
        ) from None


def read_device_folder(folder: Path) -> tuple[MultiTaskDataset, MultiTaskDataset]:
    """The device's (train, test) pairs, or ``DeviceDataError`` naming the file and what is wrong."""
    folder = Path(folder)
    meta = _meta(folder)
    try:
        tasks = [TaskSpec(str(t["name"]), int(t["num_classes"])) for t in meta["tasks"]]
        with np.load(folder / PAIRS, allow_pickle=False) as arrays:
            parts = [
                MultiTaskDataset(
                    torch.from_numpy(arrays[f"{split}_images"].copy()),
                    torch.from_numpy(arrays[f"{split}_labels"].copy()),
                    tasks,
                )
                for split in ("train", "test")
            ]
    except (OSError, KeyError, ValueError) as err:
        raise DeviceDataError(f"{folder / PAIRS}: unreadable or not of the expected layout ({err})") from None
    return parts[0], parts[1]
