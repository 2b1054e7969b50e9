"""One device's local round, without Flower: DP-SGD on its own pairs with a cumulative budget.

The device keeps its accountant history across rounds (the ClientApp stores it in the device's state
folder, ``privacy/device_state.py``), so its epsilon is cumulative over every round it took part in. Before
training it computes the epsilon it WOULD have after this round; if that exceeds its budget it declines, so
no update past the budget ever leaves the device.

FedProx's proximal term ``mu/2 ||w - w_global||^2`` does not depend on the data, so it is applied as a
separate step after each private step (post-processing of DP-SGD output, ``run_epoch``'s ``after_step``):
adding it to the loss would put it inside Opacus' per-sample gradients, which only see the data terms.

Opacus is imported where a round trains (``run_local_round``, and the grouped plan's loader), not with the
module: a device's process that only releases features or evaluates builds its generator here
(``build_generator``), and on a board every message is a process of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ExperimentConfig, FeatureDPConfig
from ..data import MultiTaskDataset
from ..methods import method_plan
from ..model import FeatureGenerator, build_heads
from ..privacy import DevicePrivacyPlan, StepHistory, release
from ..privacy.accounting import pair_plan
from ..privacy.randomness import Randomness
from .epoch import EpochSteps, GroupSteps, JointSteps, SampleSteps, run_epoch


def privacy_plan(cfg: ExperimentConfig, data: MultiTaskDataset) -> DevicePrivacyPlan:
    """How this device's DP-SGD samples and is accounted: per group of pairs or per pair."""
    if method_plan(cfg).grouped:
        from ..privacy.group_dp_sgd import GroupLoader  # Opacus: see the module's docstring

        group = cfg.dp_sgd.group_size
        loader = GroupLoader(data, group, max(1, cfg.train.batch_size // group), key=cfg.train.seed)
        return DevicePrivacyPlan(True, loader.sample_rate, len(loader), cfg.dp_sgd)
    return pair_plan(cfg.dp_sgd, cfg.train.batch_size, len(data))


@dataclass
class LocalUpdate:
    """What a device's local round produced."""

    generator_weights: dict[str, torch.Tensor] | None  # None if declined
    head_weights: dict[str, torch.Tensor] | None
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

    def __init__(
        self, generator: FeatureGenerator, heads: nn.ModuleList, feature_dp: FeatureDPConfig, randomness: Randomness
    ):
        super().__init__()
        self.generator, self.heads = generator, heads
        self.feature_dp, self.randomness = feature_dp, randomness

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        feats, attention = self.generator(x)
        released = release(feats, self.feature_dp, self.randomness)
        return [head(released[:, t]) for t, head in enumerate(self.heads)], attention, feats


def build_generator(cfg: ExperimentConfig, data: MultiTaskDataset) -> FeatureGenerator:
    num_classes = [t.num_classes for t in data.tasks]
    return FeatureGenerator(method_plan(cfg).name, data.image_shape, len(data.tasks), cfg.model, num_classes)


def run_local_round(
    *,
    cfg: ExperimentConfig,
    data: MultiTaskDataset,
    plan: DevicePrivacyPlan,
    generator_weights: dict[str, torch.Tensor],
    head_weights: dict[str, torch.Tensor],
    history: StepHistory,
    noise_multiplier: float,
    randomness: Randomness,
    proximal_mu: float = 0.0,
) -> LocalUpdate:
    """``cfg.federated.local_epochs`` of DP-SGD on this device's ``data``, or a declined update.

    Args:
        cfg: the device's config for this round (the server's, made no weaker by the owner's policy). Its
            ``federated.device_epsilon_budget`` caps the cumulative epsilon; ``federated.device_heads``
            says whether the heads train (all of it under DP-SGD) or stay the server's, frozen.
        data: the device's own training pairs.
        plan: ``privacy_plan(cfg, data)``: the sampling and accounting unit, built once by the caller.
        generator_weights: the server's encoder + Cross-SEC state to start from.
        head_weights: the server's heads.
        history: every DP-SGD step this device took before, for its cumulative epsilon.
        noise_multiplier: the device's noise multiplier, calibrated once for the run.
        randomness: where the DP-SGD noise, the Poisson sampling and the feature noise in the loss come from.
        proximal_mu: FedProx's mu (0: plain local DP-SGD).
    """
    from ..privacy import make_private, make_private_groups  # Opacus: see the module's docstring

    local_epochs, budget = cfg.federated.local_epochs, cfg.federated.device_epsilon_budget
    after = history.extended(noise_multiplier, plan.sample_rate, local_epochs * plan.steps_per_epoch)
    would_be = plan.epsilon(after)
    if would_be > budget:
        spent = plan.epsilon(history)  # only said when declining: one accounting less in every deployed message
        reason = f"budget: epsilon {spent:.3f} spent, {would_be:.3f} after this round > budget {budget:.3f}"
        return LocalUpdate(None, None, 0, 0.0, spent, history, declined=reason)

    method = method_plan(cfg)
    train_heads = cfg.federated.device_heads == "dp_trained"
    if plan.grouped and train_heads:
        raise ValueError(f"method {method.name!r} clips per group: keep federated.device_heads='frozen'")
    generator = build_generator(cfg, data)
    generator.load_state_dict(generator_weights)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
    heads.load_state_dict(head_weights)
    heads.requires_grad_(train_heads)
    trained: nn.Module = DeviceModel(generator, heads, method.feature_dp, randomness) if train_heads else generator
    opt = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=cfg.federated.local_lr)

    local_epochs, batch = cfg.federated.local_epochs, min(cfg.train.batch_size, len(data))
    steps: EpochSteps
    if plan.grouped:  # a batch statistic in the loss: clip per group of pairs (privacy/group_dp_sgd.py)
        group = cfg.dp_sgd.group_size
        private = make_private_groups(
            trained, opt, data, cfg.dp_sgd, local_epochs, group, max(1, batch // group),
            cfg.train.seed,  # the plan's grouping, every round
            noise_multiplier, history, randomness=randomness,
        )
        steps = GroupSteps(private, heads, method.objective, method.feature_dp, randomness)
    else:
        loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
        private = make_private(
            trained, opt, loader, cfg.dp_sgd, local_epochs, noise_multiplier, history, randomness=randomness
        )
        if train_heads:
            steps = JointSteps(private, heads, generator.adversary, method.objective)
        else:
            steps = SampleSteps(
                private.module, heads, private.loader, method.objective, method.feature_dp, private.optimizer,
                randomness, private=private,
            )

    after_step = _proximal_step(trained, cfg.federated.local_lr, proximal_mu) if proximal_mu > 0 else None
    loss = 0.0
    for _ in range(local_epochs):
        loss = run_epoch(steps, after_step=after_step)
    after = private.history
    return LocalUpdate(
        generator.state_dict(), heads.state_dict(), len(data), loss, plan.epsilon(after), after,
        after.steps - history.steps,
    )


def _proximal_step(trained: nn.Module, lr: float, mu: float) -> Callable[[], None]:
    """FedProx's step towards the weights the round started from, after each private step."""
    start = {k: v.detach().clone() for k, v in trained.named_parameters()}

    def step() -> None:
        with torch.no_grad():
            for name, p in trained.named_parameters():
                p.sub_(lr * mu * (p - start[name]))

    return step
