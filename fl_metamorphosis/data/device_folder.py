"""A real device's own data: one folder with its train and test pairs, copied onto the board once.

``deploy prepare-data`` writes one folder per device (``device-N/``) with ``pairs.npz`` (images as float32
in [0, 1], one label column per task; read with ``allow_pickle=False``, so the file holds arrays only)
and ``dataset.json`` (its partition id, the tasks, the counts). The ClientApp reads the folder named by
its node config (``data-dir``) instead of building a simulated partition.

The folder is copied onto a board by hand, so it is checked like any file from elsewhere: ``pairs.npz`` must be
the uncompressed zip ``np.savez`` writes (a deflated member could unpack to far more memory than the board has,
and is refused before any array is read), and a split with no pairs is refused by name rather than failing
later in training or evaluation.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where pairs are read: `deploy device` reads the partition id only
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


def _check_unpacked_size(path: Path) -> None:
    """Refuse an archive whose members would unpack to more than the file itself (compressed or overlapping
    members): ``np.savez`` stores its arrays uncompressed, so such a file was not written by prepare-data."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise DeviceDataError(f"{path}: unreadable or not the zip np.savez writes ({err})") from None
    declared, on_disk = sum(e.file_size for e in entries), path.stat().st_size
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or declared > on_disk:
        raise DeviceDataError(
            f"{path}: refused: its arrays declare {declared:,} bytes once unpacked from {on_disk:,} on disk "
            "(compressed members); `metamorphosis deploy prepare-data` stores them uncompressed: copy the "
            "device's folder it wrote again"
        )


def _split(folder: Path, arrays: dict[str, np.ndarray], split: str, tasks: list[TaskSpec]) -> MultiTaskDataset:
    """One split's pairs; an empty one is refused here, before the dataset's label checks fail on it."""
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if len(images) == 0:
        raise DeviceDataError(
            f"{folder / PAIRS}: holds no {split} pairs; re-run `metamorphosis deploy prepare-data` with more "
            "data.train_pairs / data.test_pairs or fewer devices, and copy the device's folder again"
        )
    import torch

    from .multitask import MultiTaskDataset

    return MultiTaskDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), tasks)


def read_device_folder(folder: Path) -> tuple[MultiTaskDataset, MultiTaskDataset]:
    """The device's (train, test) pairs, or ``DeviceDataError`` naming the file and what is wrong."""
    from .multitask import TaskSpec

    folder = Path(folder)
    meta = _meta(folder)
    if (folder / PAIRS).is_file():  # absent: the np.load below names it
        _check_unpacked_size(folder / PAIRS)
    try:
        tasks = [TaskSpec(str(t["name"]), int(t["num_classes"])) for t in meta["tasks"]]
        with np.load(folder / PAIRS, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        train, test = (_split(folder, arrays, split, tasks) for split in ("train", "test"))
    except DeviceDataError:
        raise  # already names the file and the fix
    except (OSError, KeyError, ValueError, MemoryError) as err:  # MemoryError: an array header declaring exabytes
        raise DeviceDataError(f"{folder / PAIRS}: unreadable or not of the expected layout ({err})") from None
    return train, test
