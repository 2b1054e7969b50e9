"""Train one feature-generation method (encoder + Cross-SEC with DP-SGD, heads alongside) on one machine."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import privacy  # its DP-SGD names load Opacus on first use: a server that only evaluates never does
from ..config import ExperimentConfig, FeatureDPConfig, Method
from ..data import TrainTestSplit
from ..methods import method_plan
from ..model import FeatureGenerator, build_heads
from ..privacy.randomness import randomness_for
from .epoch import EpochSteps, GroupSteps, SampleSteps, run_epoch
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


EpochCallback = Callable[[dict], None]


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
        private = privacy.make_private_groups(
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
        private = privacy.make_private(generator, opt, loader, cfg.dp_sgd, cfg.train.epochs, randomness=randomness)
        module, opt, loader = private.module, private.optimizer, private.loader

    steps: EpochSteps
    if grouped:
        steps = GroupSteps(private, heads, objective, feature_dp, randomness, head_opt)
    else:
        steps = SampleSteps(module, heads, loader, objective, feature_dp, opt, randomness, head_opt, private)
    result = TrainedModel(method, generator, heads, feature_dp)
    for epoch in range(1, cfg.train.epochs + 1):
        mean_loss = run_epoch(steps)
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
