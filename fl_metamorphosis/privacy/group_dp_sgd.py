"""DP-SGD whose clipping unit is a GROUP of pairs: for losses that are statistics over several samples.

NoPeek's distance correlation between features and inputs is a statistic over a set of samples, so one
sample's loss depends on the others and Opacus' per-sample clipping no longer bounds one sample's
influence. Here the unit is a group instead:

* each pair's group comes from a keyed hash of its own content, so adding or removing one pair changes
  exactly one group (an index-based split would reshuffle every group);
* groups are Poisson-sampled (Opacus' ``UniformWithReplacementSampler``), the model runs on all pairs
  of the sampled groups at once, and the per-pair gradients Opacus' hooks compute are summed per group:
  with a loss that is a sum of per-group terms, that sum is exactly the group's gradient;
* Opacus' ``DPOptimizer`` clips each group's gradient, adds the noise and steps; an Opacus accountant
  counts the steps at the group sample rate.

The accountant's guarantee is for adding or removing a whole group. Adding or removing one pair CHANGES
one group, which is a distance of 2 at the group level; by group privacy, a group-level (e, d)
guarantee gives (2e, 2 exp(e) d) for one pair. ``accounting.group_privacy`` does that conversion, and the
noise is calibrated so that the pair-level result meets the same (epsilon, delta) target as the per-sample runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn, optim

from ..config import DPSGDConfig
from ..data import MultiTaskDataset
from .accounting import StepHistory, calibrate_group_noise
from .dp_sgd import SecretNoiseDPOptimizer
from .randomness import Randomness


def group_of(images: torch.Tensor, num_groups: int, key: int) -> torch.Tensor:
    """Each image's group ``[N]`` from a keyed hash of its pixels alone."""
    pixels = (images.flatten(1) * 255).round().to(torch.int64)
    weights = torch.randint(1, 2**31 - 1, (pixels.shape[1],), generator=torch.Generator().manual_seed(key))
    return ((pixels * weights).sum(1) % 2_147_483_647) % num_groups


@dataclass
class GroupBatch:
    images: torch.Tensor  # all pairs of the sampled groups
    labels: torch.Tensor
    group: torch.Tensor  # [N] index of each pair's group within the batch (0..groups-1)
    groups: int


class GroupLoader:
    """Poisson-sampled groups; each batch holds every pair of every sampled group."""

    def __init__(
        self,
        data: MultiTaskDataset,
        group_size: int,
        groups_per_batch: int,
        key: int,
        generator: torch.Generator | None = None,
    ):
        num_groups = max(1, len(data) // group_size)
        ids = group_of(data.images, num_groups, key)
        self.members = [idx for g in range(num_groups) if len(idx := torch.nonzero(ids == g).flatten())]
        self.data = data
        self.sample_rate = min(1.0, groups_per_batch / len(self.members))
        self.sampler = UniformWithReplacementSampler(
            num_samples=len(self.members),
            sample_rate=self.sample_rate,
            generator=generator,  # the sampling is secret: the caller's Randomness
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[GroupBatch]:
        for chosen in self.sampler:
            parts = [self.members[g] for g in chosen]
            if not parts:
                yield GroupBatch(self.data.images[:0], self.data.labels[:0], torch.zeros(0, dtype=torch.long), 0)
                continue
            index = torch.cat(parts)
            group = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(parts)])
            yield GroupBatch(self.data.images[index], self.data.labels[index], group, len(parts))


@dataclass
class PrivateGroupTraining:
    module: GradSampleModule
    optimizer: DPOptimizer
    loader: GroupLoader
    noise_multiplier: float
    history: StepHistory  # counted here: one step per call, at the group sample rate
    cfg: DPSGDConfig

    def step(self, loss: torch.Tensor, batch: GroupBatch) -> None:
        """Backward ``loss`` (a SUM of per-group terms), pool the per-pair gradients by group, and take
        one private step (clip per group, noise, count it)."""
        self.optimizer.zero_grad(set_to_none=True)
        if batch.groups:
            loss.backward()
        for p in self.module.parameters():
            if not p.requires_grad:
                continue
            per_pair = p.grad_sample if batch.groups else None
            pooled = p.new_zeros((batch.groups, *p.shape))
            if per_pair is not None:
                pooled.index_add_(0, batch.group, per_pair)
            p.grad_sample = pooled  # an empty batch still takes a noise-only step, as the analysis assumes
        self.optimizer.step()
        self.history = self.history.extended(self.noise_multiplier, self.loader.sample_rate, 1)

    def epsilon(self) -> float:
        return self.history.epsilon(self.cfg.delta, self.cfg.accountant, grouped=True)


def make_private_groups(
    module: nn.Module,
    optimizer: optim.Optimizer,
    data: MultiTaskDataset,
    cfg: DPSGDConfig,
    epochs: int,
    group_size: int,
    groups_per_batch: int,
    group_key: int,
    noise_multiplier: float | None = None,
    history: StepHistory | None = None,
    *,
    randomness: Randomness,
) -> PrivateGroupTraining:
    """``group_key`` fixes which group each pair falls in; a device passes the same key every round, so its
    groups and sample rate stay those its budget was planned with. The grouping need not be secret (it is
    the clipping unit, not noise); the group sampling and the noise come from ``randomness``."""
    loader = GroupLoader(data, group_size, groups_per_batch, key=group_key, generator=randomness.generator())
    if noise_multiplier is None:
        noise_multiplier = calibrate_group_noise(cfg, loader.sample_rate, epochs * len(loader))
    wrapped = GradSampleModule(module, loss_reduction="sum")
    dp_opt = SecretNoiseDPOptimizer(
        optimizer,
        randomness=randomness,
        noise_multiplier=noise_multiplier,
        max_grad_norm=cfg.max_grad_norm,
        expected_batch_size=max(1, groups_per_batch),
        loss_reduction="sum",
    )
    return PrivateGroupTraining(
        wrapped, dp_opt, loader, noise_multiplier, history if history is not None else StepHistory(), cfg
    )
