"""One device's part of a federated round, without Flower: local DP-SGD with a cumulative budget.

The device keeps its accountant history across rounds (the ClientApp stores it in the device's state
folder, ``device_state.py``), so its epsilon is cumulative over every round it took part in. Before training it
computes the epsilon it WOULD have after this round; if that exceeds its budget it declines, so no update
past the budget ever leaves the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ExperimentConfig
from ..data import MultiTaskDataset
from ..methods import method_plan
from ..model import FeatureGenerator, build_heads
from ..privacy import DevicePrivacyPlan, StepHistory, make_private, make_private_groups, release
from ..privacy.accounting import pair_plan
from ..privacy.group_dp_sgd import GroupLoader
from ..privacy.randomness import Randomness
from ..training.trainer import run_epoch, run_group_epoch


def privacy_plan(cfg: ExperimentConfig, data: MultiTaskDataset) -> DevicePrivacyPlan:
    if method_plan(cfg).grouped:
        group = cfg.dp_sgd.group_size
        loader = GroupLoader(data, group, max(1, cfg.train.batch_size // group), key=cfg.train.seed)
        return DevicePrivacyPlan(True, loader.sample_rate, len(loader), cfg.dp_sgd)
    return pair_plan(cfg.dp_sgd, cfg.train.batch_size, len(data))


@dataclass
class LocalUpdate:
    """What a device reports after a train request."""

    weights: dict[str, torch.Tensor] | None  # joint state (joint_state), no Opacus ``_module.``; None if declined
    num_examples: int
    train_loss: float
    epsilon: float  # cumulative, after this round
    history: StepHistory = field(default_factory=StepHistory)
    round_steps: int = 0  # DP-SGD steps taken this round
    declined: str | None = None  # why the device did not train


class DeviceModel(nn.Module):
    """Encoder + Cross-SEC + heads as ONE module, so DP-SGD clips and noises the heads' gradients too.

    Training the heads locally without DP would void the encoder's DP-SGD guarantee: the encoder's
    per-sample gradients flow through the heads, and non-private heads carry every sample's influence.
    """

    def __init__(self, generator: FeatureGenerator, heads: nn.ModuleList, feature_dp, randomness: Randomness):
        super().__init__()
        self.generator, self.heads = generator, heads
        self.feature_dp, self.randomness = feature_dp, randomness

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        feats, attention = self.generator(x)
        released = release(feats, self.feature_dp, self.randomness)
        return [head(released[:, t]) for t, head in enumerate(self.heads)], attention, feats


def joint_state(generator: nn.Module, heads: nn.ModuleList) -> dict[str, torch.Tensor]:
    """One flat state dict (``generator.*``, ``heads.*``): what devices and server exchange."""
    return {
        **{f"generator.{k}": v for k, v in generator.state_dict().items()},
        **{f"heads.{k}": v for k, v in heads.state_dict().items()},
    }


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")}
    heads = {k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")}
    return gen, heads


def build_generator(cfg: ExperimentConfig, data: MultiTaskDataset) -> FeatureGenerator:
    num_classes = [t.num_classes for t in data.tasks]
    return FeatureGenerator(method_plan(cfg).name, data.image_shape, len(data.tasks), cfg.model, num_classes)


def train_locally(
    cfg: ExperimentConfig,
    data: MultiTaskDataset,
    generator_weights: dict[str, torch.Tensor],
    head_weights: dict[str, torch.Tensor],
    history: StepHistory,
    noise_multiplier: float,
    budget: float,
    local_epochs: int,
    randomness: Randomness,
    proximal_mu: float = 0.0,
    train_heads: bool = False,
) -> LocalUpdate:
    """Run ``local_epochs`` of DP-SGD on encoder + Cross-SEC with the server's heads frozen, or (with
    ``train_heads``) on encoder + Cross-SEC + heads together, all of it under DP-SGD. The DP-SGD noise,
    the Poisson sampling and the feature noise in the loss all come from ``randomness``.

    FedProx's proximal term ``mu/2 ||w - w_global||^2`` does not depend on the data, so it is applied as
    a separate step after each private step (post-processing of DP-SGD output): adding it to the loss
    would put it inside Opacus' per-sample gradients, which only see the data terms.
    """
    method = method_plan(cfg)  # the run trains the config's last method
    batch = min(cfg.train.batch_size, len(data))
    plan = privacy_plan(cfg, data)
    after = history.extended(noise_multiplier, plan.sample_rate, local_epochs * plan.steps_per_epoch)
    spent, would_be = plan.epsilon(history), plan.epsilon(after)
    if would_be > budget:
        reason = f"budget: epsilon {spent:.3f} spent, {would_be:.3f} after this round > budget {budget:.3f}"
        return LocalUpdate(None, 0, 0.0, spent, history, declined=reason)

    generator = build_generator(cfg, data)
    generator.load_state_dict(generator_weights)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
    heads.load_state_dict(head_weights)
    heads.requires_grad_(train_heads)
    feature_dp, objective = method.feature_dp, method.objective
    trained: nn.Module = DeviceModel(generator, heads, feature_dp, randomness) if train_heads else generator
    global_weights = {k: v.detach().clone() for k, v in trained.named_parameters()}

    opt = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=cfg.federated.local_lr)

    def proximal_step() -> None:
        with torch.no_grad():
            for name, p in trained.named_parameters():
                p.sub_(cfg.federated.local_lr * proximal_mu * (p - global_weights[name]))

    after_step = proximal_step if proximal_mu > 0 else None
    loss = 0.0
    if plan.grouped:  # a batch statistic in the loss: clip per group of pairs (privacy/group_dp_sgd.py)
        if train_heads:
            raise ValueError(f"method {method.name!r} clips per group: keep federated.device_heads='frozen'")
        group = cfg.dp_sgd.group_size
        grouped = make_private_groups(
            generator,
            opt,
            data,
            cfg.dp_sgd,
            local_epochs,
            group,
            max(1, batch // group),
            cfg.train.seed,  # the plan's grouping, every round
            noise_multiplier,
            history,
            randomness=randomness,
        )
        for _ in range(local_epochs):
            loss = run_group_epoch(grouped, heads, objective, feature_dp, None, randomness, after_step)
        weights = {k: v.detach().clone() for k, v in joint_state(generator, heads).items()}
        taken = grouped.history.steps - history.steps
        return LocalUpdate(weights, len(data), loss, plan.epsilon(grouped.history), grouped.history, taken)

    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    private = make_private(
        trained, opt, loader, cfg.dp_sgd, local_epochs, noise_multiplier, history, randomness=randomness
    )
    for _ in range(local_epochs):
        if train_heads:
            loss = _joint_epoch(private, heads, generator.adversary, objective, after_step)
        else:
            loss = run_epoch(
                private.module,
                heads,
                private.loader,
                objective,
                feature_dp,
                private.optimizer,
                None,
                randomness,
                after_step,
                private,
            )
    weights = {k: v.detach().clone() for k, v in joint_state(generator, heads).items()}
    # the plan's (cached) accountant: the same Opacus accountant and history the engine holds
    after = private.history
    return LocalUpdate(weights, len(data), loss, plan.epsilon(after), after, after.steps - history.steps)


def _joint_epoch(private, heads: nn.ModuleList, adversary, objective, after_step) -> float:
    total, seen = 0.0, 0
    private.module.train()
    for x, y in private.loader:
        outputs, attention, feats = private.module(x)
        per_sample = objective.from_outputs(heads, outputs, attention, y, feats)
        if objective.adversary_weight > 0:
            per_sample = per_sample + objective.adversary_weight * adversary.per_sample_loss(
                feats, x, y, objective.adversary_objective
            )
        private.optimizer.zero_grad(set_to_none=True)
        private.backward(per_sample)
        private.optimizer.step()
        if after_step is not None:
            after_step()
        total += float(per_sample.detach().sum())
        seen += len(x)
    return total / max(seen, 1)
