"""One device's part of a federated round, without Flower: local DP-SGD with a cumulative budget.

The device keeps its accountant history across rounds (a Flower ClientApp stores it in
``context.state``), so its epsilon is cumulative over every round it took part in. Before training it
computes the epsilon it WOULD have after this round; if that exceeds its budget it declines, so no update
past the budget ever leaves the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from opacus.accountants import create_accountant
from torch.utils.data import DataLoader

from ..config import ExperimentConfig
from ..data import MultiTaskDataset
from ..model import FeatureGenerator, build_heads
from ..privacy import make_private
from ..training.trainer import method_feature_dp, method_objective, run_epoch

History = list[tuple[float, float, int]]


def epsilon_of(history: History, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of an accountant history (0 for no steps), by the same Opacus accountant the device uses."""
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta))


def planned_history(history: History, noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """The history after ``steps`` more steps (what the accountant will hold if the device trains)."""
    out = [tuple(h) for h in history]
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sample_rate:
        out[-1] = (noise_multiplier, sample_rate, out[-1][2] + steps)
    elif steps:
        out.append((noise_multiplier, sample_rate, steps))
    return out


@dataclass
class LocalUpdate:
    """What a device reports after a train request."""

    weights: dict[str, torch.Tensor] | None  # generator state dict without Opacus' ``_module.``; None if declined
    num_examples: int
    train_loss: float
    epsilon: float  # cumulative, after this round
    history: History = field(default_factory=list)
    declined: str | None = None  # why the device did not train


def build_generator(cfg: ExperimentConfig, data: MultiTaskDataset) -> FeatureGenerator:
    return FeatureGenerator(cfg.methods[-1], data.image_shape, len(data.tasks), cfg.model)


def train_locally(
    cfg: ExperimentConfig,
    data: MultiTaskDataset,
    generator_weights: dict[str, torch.Tensor],
    head_weights: dict[str, torch.Tensor],
    history: History,
    noise_multiplier: float,
    budget: float,
    local_epochs: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> LocalUpdate:
    """Run ``local_epochs`` of DP-SGD on encoder + Cross-SEC with the server's heads frozen.

    FedProx's proximal term ``mu/2 ||w - w_global||^2`` does not depend on the data, so it is applied as
    a separate step after each private step (post-processing of DP-SGD output): adding it to the loss
    would put it inside Opacus' per-sample gradients, which only see the data terms.
    """
    method = cfg.methods[-1]
    batch = min(cfg.train.batch_size, len(data))
    steps = local_epochs * max(1, len(data) // batch)
    sample_rate = 1 / max(1, len(data) // batch)
    after = planned_history(history, noise_multiplier, sample_rate, steps)
    spent, would_be = epsilon_of(history, cfg.dp_sgd.delta), epsilon_of(after, cfg.dp_sgd.delta)
    if would_be > budget:
        reason = f"budget: epsilon {spent:.3f} spent, {would_be:.3f} after this round > budget {budget:.3f}"
        return LocalUpdate(None, 0, 0.0, spent, list(history), declined=reason)

    torch.manual_seed(seed)
    generator = build_generator(cfg, data)
    generator.load_state_dict(generator_weights)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
    heads.load_state_dict(head_weights)
    heads.requires_grad_(False)
    global_weights = {k: v.detach().clone() for k, v in generator.state_dict().items()}

    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr)
    private = make_private(generator, opt, loader, cfg.dp_sgd, local_epochs, noise_multiplier, history)

    def proximal_step() -> None:
        with torch.no_grad():
            for name, p in generator.named_parameters():
                p.sub_(cfg.train.lr * proximal_mu * (p - global_weights[name]))

    noise_rng = torch.Generator().manual_seed(seed + 1)
    loss = 0.0
    for _ in range(local_epochs):
        loss = run_epoch(
            private.module,
            heads,
            private.loader,
            method_objective(method, cfg),
            method_feature_dp(method, cfg),
            private.optimizer,
            None,
            noise_rng,
            proximal_step if proximal_mu > 0 else None,
        )
    weights = {k: v.detach().clone() for k, v in generator.state_dict().items()}
    return LocalUpdate(weights, len(data), loss, private.epsilon(), private.history)
