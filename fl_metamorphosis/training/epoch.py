"""One epoch loop for every way this project trains, and the three kinds of step it takes.

``run_epoch`` is the loop: a step per batch, then the caller's ``after_step`` (FedProx's proximal step,
applied after the private step as post-processing of its output), and the mean loss. What a step is
depends on how the weights are protected:

- ``SampleSteps``: a per-sample loss a batch, plain (central training without DP) or DP-SGD through
  Opacus (``PrivateTraining``), the heads beside the private module with their own optimiser or frozen;
- ``JointSteps``: DP-SGD on encoder + Cross-SEC + heads as one module (``federated.device_heads =
  "dp_trained"``), so the heads' gradients are clipped and noised too;
- ``GroupSteps``: group-level DP-SGD (``privacy/group_dp_sgd.py``) for an objective with a batch
  statistic, which is clipped per group of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import FeatureDPConfig
from ..losses import Objective
from ..privacy import release
from ..privacy.randomness import Randomness

if TYPE_CHECKING:
    from ..privacy import PrivateGroupTraining, PrivateTraining


class EpochSteps(Protocol):
    def batches(self) -> Iterable[Any]:
        """Put the modules in training mode; the epoch's batches."""

    def step(self, batch: Any) -> tuple[float, int]:
        """One optimiser step on ``batch``: (summed loss, number of samples or groups it covers)."""


def run_epoch(steps: EpochSteps, *, after_step: Callable[[], None] | None = None) -> float:
    """One pass of ``steps`` over its batches, ``after_step()`` after each; the mean loss."""
    total, seen = 0.0, 0
    for batch in steps.batches():
        summed, count = steps.step(batch)
        if after_step is not None:
            after_step()
        total, seen = total + summed, seen + count
    return total / max(seen, 1)


def unwrapped(module: nn.Module) -> nn.Module:
    """The model inside an Opacus GradSampleModule (or the module itself)."""
    return getattr(module, "_module", module)


@dataclass
class SampleSteps:
    """A per-sample loss a batch. Heads are updated only when ``head_optimizer`` is given; with ``private``
    (DP-SGD) its ``backward`` takes the per-sample loss (ghost clipping's two passes)."""

    module: nn.Module
    heads: nn.ModuleList
    loader: DataLoader
    objective: Objective
    feature_dp: FeatureDPConfig
    optimizer: torch.optim.Optimizer
    randomness: Randomness
    head_optimizer: torch.optim.Optimizer | None = None
    private: PrivateTraining | None = None

    def batches(self) -> Iterable[Any]:
        self.module.train()
        self.heads.train()
        return self.loader

    def step(self, batch: Any) -> tuple[float, int]:
        x, y = batch
        feats, attention = self.module(x)
        released = release(feats, self.feature_dp, self.randomness)
        adversary = unwrapped(self.module).adversary
        per_sample, _ = self.objective.per_sample(self.heads, released, attention, y, feats, x, adversary)
        self.optimizer.zero_grad(set_to_none=True)
        if self.head_optimizer is not None:
            self.head_optimizer.zero_grad(set_to_none=True)
        if self.private is not None:  # per-sample objectives only: a batch statistic trains in groups
            self.private.backward(per_sample, self.heads.parameters() if self.head_optimizer is not None else ())
        else:
            (per_sample.mean() + self.objective.batch_term(feats, x)).backward()
        self.optimizer.step()
        if self.head_optimizer is not None:
            self.head_optimizer.step()
        return float(per_sample.detach().sum()), len(x)


@dataclass
class JointSteps:
    """DP-SGD on one module that applies the heads itself (``local_round.DeviceModel``): its forward gives
    the heads' outputs, the attention and the features before release."""

    private: PrivateTraining
    heads: nn.ModuleList
    adversary: nn.Module
    objective: Objective

    def batches(self) -> Iterable[Any]:
        self.private.module.train()
        return self.private.loader

    def step(self, batch: Any) -> tuple[float, int]:
        x, y = batch
        outputs, attention, feats = self.private.module(x)
        per_sample = self.objective.from_outputs(self.heads, outputs, attention, y, feats)
        if self.objective.adversary_weight > 0:
            per_sample = per_sample + self.objective.adversary_weight * self.adversary.per_sample_loss(
                feats, x, y, self.objective.adversary_objective
            )
        self.private.optimizer.zero_grad(set_to_none=True)
        self.private.backward(per_sample)
        self.private.optimizer.step()
        return float(per_sample.detach().sum()), len(x)


def group_loss(
    objective: Objective,
    heads: nn.ModuleList,
    released: torch.Tensor,
    attention: torch.Tensor,
    labels: torch.Tensor,
    feats: torch.Tensor,
    x: torch.Tensor,
    group: torch.Tensor,
    groups: int,
) -> torch.Tensor:
    """Sum over groups of (the group's mean per-sample loss + the batch statistic on the group alone):
    no group's term depends on another group's samples, so clipping per group bounds each group."""
    per_sample, _ = objective.per_sample(heads, released, attention, labels, feats, x)
    counts = torch.bincount(group, minlength=groups).clamp(min=1)
    total = (per_sample / counts[group]).sum()
    for g in range(groups):
        mask = group == g
        if int(mask.sum()) >= 4:  # the bias-corrected dCor needs at least 4 samples
            total = total + objective.batch_term(feats[mask], x[mask])
    return total


@dataclass
class GroupSteps:
    """Group-level DP-SGD: one private step a batch of groups, even an empty one (a noise-only step, as the
    analysis assumes). The loss counted is per group."""

    private: PrivateGroupTraining
    heads: nn.ModuleList
    objective: Objective
    feature_dp: FeatureDPConfig
    randomness: Randomness
    head_optimizer: torch.optim.Optimizer | None = None

    def batches(self) -> Iterable[Any]:
        self.private.module.train()
        self.heads.train()
        return self.private.loader

    def step(self, batch: Any) -> tuple[float, int]:
        loss, summed = None, 0.0
        if batch.groups:
            feats, attention = self.private.module(batch.images)
            released = release(feats, self.feature_dp, self.randomness)
            loss = group_loss(
                self.objective, self.heads, released, attention, batch.labels, feats, batch.images, batch.group,
                batch.groups,
            )
            summed = float(loss.detach())
        if self.head_optimizer is not None:
            self.head_optimizer.zero_grad(set_to_none=True)
        self.private.step(loss, batch)
        if self.head_optimizer is not None and batch.groups:
            self.head_optimizer.step()
        return summed, batch.groups
