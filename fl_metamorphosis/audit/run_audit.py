"""Run every attack against one trained model: what the privacy figures in a summary come from.

The attacker is given the released features of ``attacker_samples`` TRAINING images together with
their labels for every task and the images themselves (as much as a curious server sees, and more), and
is scored on ``eval_samples`` held-out TEST images it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import AuditConfig
from ..data import MultiTaskDataset, TrainTestSplit
from ..training import TrainedModel, released_features, task_accuracy
from .cross_task_probe import cross_task_attacks
from .dependence import dependence_report
from .reconstruction_attack import one_hot, reconstruction_attack


@dataclass(frozen=True)
class AttackData:
    """Fixed attacker (train) and evaluation (test) samples, shared by every method's audit."""

    attacker: MultiTaskDataset
    evaluation: MultiTaskDataset

    @classmethod
    def draw(cls, split: TrainTestSplit, cfg: AuditConfig, seed: int) -> AttackData:
        rng = torch.Generator().manual_seed(seed)
        n_att = min(cfg.attacker_samples, len(split.train))
        n_eval = min(cfg.eval_samples, len(split.test))
        return cls(
            split.train.subset(torch.randperm(len(split.train), generator=rng)[:n_att]),
            split.test.subset(torch.randperm(len(split.test), generator=rng)[:n_eval]),
        )


def label_only_floor(data: AttackData, cfg: AuditConfig, seed: int) -> dict[str, float]:
    """SSIM of the reconstruction decoder fed only each task's one-hot label (method-independent)."""
    floors = {}
    for t, task in enumerate(data.attacker.tasks):
        scores, _ = reconstruction_attack(
            one_hot(data.attacker.labels[:, t], task.num_classes),
            data.attacker.images,
            one_hot(data.evaluation.labels[:, t], task.num_classes),
            data.evaluation.images,
            cfg.decoder_epochs,
            cfg.ssim_kernel,
            seed,
        )
        floors[task.name] = scores["ssim"]
    return floors


def audit_model(
    model: TrainedModel, data: AttackData, cfg: AuditConfig, floors: dict[str, float], seed: int
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The audit section of a method's summary, and each task's held-out reconstructions (for the grid)."""
    names = data.attacker.task_names
    # Distinct seeds: the attacker's copies carry fresh noise, as a second release of the image would.
    att = released_features(model.generator, data.attacker.images, model.feature_dp, seed + 101)
    ev = released_features(model.generator, data.evaluation.images, model.feature_dp, seed + 202)

    accuracies = task_accuracy(model.heads, ev, data.evaluation.labels)
    tasks = {
        name: {"accuracy": accuracies[t], "chance": data.evaluation.chance_level(t)} for t, name in enumerate(names)
    }
    cross = cross_task_attacks(
        att.numpy(),
        data.attacker.labels.numpy(),
        ev.numpy(),
        data.evaluation.labels.numpy(),
        names,
        "mlp",
        cfg.probe_hidden,
        cfg.probe_max_iter,
        seed,
    )
    reconstruction, recons = {}, {}
    for t, name in enumerate(names):
        scores, recons[name] = reconstruction_attack(
            att[:, t], data.attacker.images, ev[:, t], data.evaluation.images, cfg.decoder_epochs, cfg.ssim_kernel, seed
        )
        reconstruction[name] = {**scores, "ssim_label_only": floors[name]}
    n = min(cfg.dcor_samples, len(data.evaluation))
    dcor = dependence_report(ev[:n], data.evaluation.images[:n], names)
    audit = {
        "tasks": tasks,
        "cross_task_attack": cross,
        "reconstruction": reconstruction,
        "distance_correlation": dcor,
        "attacker": {
            "train_samples": len(data.attacker),
            "eval_samples": len(data.evaluation),
            "knows": "released features, every task's labels and the images of its training samples",
            "probe": f"StandardScaler + MLP({cfg.probe_hidden}), {cfg.probe_max_iter} epochs",
            "decoder": f"MLP(512, 512), {cfg.decoder_epochs} epochs, SSIM window {cfg.ssim_kernel} px (uniform)",
        },
    }
    return audit, recons
