"""Train one feature-generation method (encoder + Cross-SEC with DP-SGD, heads alongside) on one machine."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ExperimentConfig, FeatureDPConfig, Method
from ..data import TrainTestSplit
from ..losses import Objective
from ..methods import method_plan
from ..model import FeatureGenerator, build_heads
from ..privacy import PrivateGroupTraining, PrivateTraining, make_private, make_private_groups, release
from ..privacy.randomness import Randomness, randomness_for
from .inference import evaluate


@dataclass
class TrainedModel:
    method: Method
    generator: FeatureGenerator  # plain module, Opacus wrapper removed
    heads: nn.ModuleList
    feature_dp: FeatureDPConfig  # what this method releases (disabled for universal)
    history: list[dict] = field(default_factory=list)
    dp_sgd: dict = field(default_factory=dict)
    wall_seconds: float = 0.0


def unwrapped(module: nn.Module) -> nn.Module:
    """The model inside an Opacus GradSampleModule (or the module itself)."""
    return getattr(module, "_module", module)


EpochCallback = Callable[[dict], None]


def run_epoch(
    module: nn.Module,
    heads: nn.ModuleList,
    loader: DataLoader,
    objective: Objective,
    feature_dp: FeatureDPConfig,
    opt: torch.optim.Optimizer,
    head_opt: torch.optim.Optimizer | None,
    randomness: Randomness,
    after_step: Callable[[], None] | None = None,
    private: PrivateTraining | None = None,
) -> float:
    """One pass over ``loader``; heads are updated only when ``head_opt`` is given. Mean per-sample loss.
    With ``private`` (DP-SGD), its ``backward`` takes the per-sample loss (ghost clipping's two passes)."""
    module.train()
    heads.train()
    total, seen = 0.0, 0
    for x, y in loader:
        feats, attention = module(x)
        per_sample, _ = objective.per_sample(
            heads, release(feats, feature_dp, randomness), attention, y, feats, x, unwrapped(module).adversary
        )
        opt.zero_grad(set_to_none=True)
        if head_opt is not None:
            head_opt.zero_grad(set_to_none=True)
        if private is not None:  # per-sample objectives only: a batch statistic trains in groups
            private.backward(per_sample, heads.parameters() if head_opt is not None else ())
        else:
            (per_sample.mean() + objective.batch_term(feats, x)).backward()
        opt.step()
        if head_opt is not None:
            head_opt.step()
        if after_step is not None:
            after_step()
        total += float(per_sample.detach().sum())
        seen += len(x)
    return total / max(seen, 1)


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


def run_group_epoch(
    private: PrivateGroupTraining,
    heads: nn.ModuleList,
    objective: Objective,
    feature_dp: FeatureDPConfig,
    head_opt: torch.optim.Optimizer | None,
    randomness: Randomness,
    after_step: Callable[[], None] | None = None,
) -> float:
    """One pass of group-level DP-SGD (privacy/group_dp_sgd.py). Mean per-group loss."""
    private.module.train()
    heads.train()
    total, seen = 0.0, 0
    for batch in private.loader:
        loss = None
        if batch.groups:
            feats, attention = private.module(batch.images)
            released = release(feats, feature_dp, randomness)
            loss = group_loss(
                objective, heads, released, attention, batch.labels, feats, batch.images, batch.group, batch.groups
            )
            total, seen = total + float(loss.detach()), seen + batch.groups
        if head_opt is not None:
            head_opt.zero_grad(set_to_none=True)
        private.step(loss, batch)
        if head_opt is not None and batch.groups:
            head_opt.step()
        if after_step is not None:
            after_step()
    return total / max(seen, 1)


def train_method(
    method: Method, split: TrainTestSplit, cfg: ExperimentConfig, on_epoch: EpochCallback | None = None
) -> TrainedModel:
    """Train ``method`` for ``cfg.train.epochs``; call ``on_epoch(row)`` after each epoch."""
    started = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    train = split.train
    num_classes = [t.num_classes for t in train.tasks]
    generator = FeatureGenerator(method, train.image_shape, len(train.tasks), cfg.model, num_classes)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in train.tasks], cfg.model)
    plan = method_plan(cfg, method)
    feature_dp, objective = plan.feature_dp, plan.objective

    loader = DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True)
    opt = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr)
    head_opt = torch.optim.Adam(heads.parameters(), lr=cfg.train.head_lr)
    private = None
    module: nn.Module = generator
    randomness = randomness_for(cfg.randomness.source, cfg.train.seed)
    grouped = plan.grouped  # a batch statistic: clip per group of pairs
    if grouped:
        group = cfg.dp_sgd.group_size
        private = make_private_groups(
            generator,
            opt,
            train,
            cfg.dp_sgd,
            cfg.train.epochs,
            group,
            cfg.train.batch_size // group,
            cfg.train.seed,
            randomness=randomness,
        )
    elif cfg.dp_sgd.enabled:
        private = make_private(generator, opt, loader, cfg.dp_sgd, cfg.train.epochs, randomness=randomness)
        module, opt, loader = private.module, private.optimizer, private.loader

    result = TrainedModel(method, generator, heads, feature_dp)
    for epoch in range(1, cfg.train.epochs + 1):
        if grouped:
            mean_loss = run_group_epoch(private, heads, objective, feature_dp, head_opt, randomness)
        else:
            mean_loss = run_epoch(
                module, heads, loader, objective, feature_dp, opt, head_opt, randomness, private=private
            )
        row = {"method": method, "epoch": epoch, "train_loss": mean_loss}
        row.update({f"test_acc.{k}": v for k, v in evaluate(generator, heads, split.test, feature_dp, epoch).items()})
        if private is not None:
            row["epsilon"] = private.epsilon()
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)
        if on_epoch:
            on_epoch(row)

    if private is not None:
        steps = private.history.steps
        q = private.loader.sample_rate if grouped else private.sample_rate
        result.dp_sgd = {
            "enabled": True,
            "epsilon": private.epsilon(),
            "epsilon_dp_accounting": private.history.epsilon_dp_accounting(cfg.dp_sgd.delta, grouped=grouped),
            "delta": cfg.dp_sgd.delta,
            "noise_multiplier": private.noise_multiplier,
            "sample_rate": q,
            "steps": steps,
            "max_grad_norm": cfg.dp_sgd.max_grad_norm,
            "accountant": cfg.dp_sgd.accountant,
            "unit": f"group of about {cfg.dp_sgd.group_size} pairs, converted to one pair" if grouped else "pair",
        }
    else:
        result.dp_sgd = {"enabled": False, "epsilon": None, "delta": None}
    # Opacus hooks live on the wrapper's inner module; hand back a clean copy for release and audit.
    result.generator = _unwrapped_copy(generator)
    result.wall_seconds = time.perf_counter() - started
    return result


def _unwrapped_copy(generator: FeatureGenerator) -> FeatureGenerator:
    clean = copy.deepcopy(generator)
    for m in clean.modules():
        for attr in ("_forward_hooks", "_backward_hooks", "_forward_pre_hooks"):
            getattr(m, attr).clear()
        for p in m.parameters(recurse=False):
            for extra in ("grad_sample", "_forward_counter", "summed_grad"):
                if hasattr(p, extra):
                    delattr(p, extra)
    return clean
