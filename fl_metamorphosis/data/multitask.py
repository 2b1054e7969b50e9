"""The multi-task dataset interface: an image and one label per task."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: its name and number of classes."""

    name: str
    num_classes: int


class MultiTaskDataset(Dataset):
    """Images ``[N, C, H, W]`` in [0, 1] with a label per task (``labels[:, t]`` is task t).

    Items are ``(image, labels)`` with ``labels`` a LongTensor of length T, so a standard (or Opacus'
    Poisson) DataLoader batches them without a custom collate function.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, tasks: list[TaskSpec]):
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0], len(tasks)):
            raise ValueError(f"labels must be [N, T] = [{images.shape[0]}, {len(tasks)}], got {tuple(labels.shape)}")
        for t, task in enumerate(tasks):
            lo, hi = int(labels[:, t].min()), int(labels[:, t].max())
            if lo < 0 or hi >= task.num_classes:
                raise ValueError(f"task {task.name!r} labels span [{lo}, {hi}], outside [0, {task.num_classes})")
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.tasks = list(tasks)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: torch.Tensor) -> MultiTaskDataset:
        return MultiTaskDataset(self.images[indices], self.labels[indices], self.tasks)

    def chance_level(self, task: int) -> float:
        """Accuracy of always answering the most frequent class (the best label-blind guess)."""
        counts = torch.bincount(self.labels[:, task], minlength=self.tasks[task].num_classes)
        return float(counts.max()) / len(self)


@dataclass(frozen=True)
class TrainTestSplit:
    train: MultiTaskDataset
    test: MultiTaskDataset
    skipped: int = 0  # files dropped because the user asked to skip bad ones (data.skip_bad_files)
