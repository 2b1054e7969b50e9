"""Run every attack against one trained model: what the privacy figures in a summary come from.

The attacker is given the released features of TRAINING images (``attacker_samples``, or more: callers
pass how many releases the server saw over the whole training, and training images are then drawn again,
each copy with fresh noise) together with their labels for every task and the images themselves, and is
scored on ``eval_samples`` held-out TEST images it never saw. The membership attack compares samples the
model trained on (``members``) with held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import AuditConfig
from ..data import MultiTaskDataset, TrainTestSplit
from ..training import TrainedModel, released_features, task_accuracy
from .cross_task_probe import cross_task_attacks
from .dependence import dependence_report
from .membership_attack import membership_auc
from .reconstruction_attack import one_hot, reconstruction_attack


@dataclass(frozen=True)
class AttackData:
    """Fixed attacker (train) and evaluation (test) samples, shared by every method's audit."""

    attacker: MultiTaskDataset
    evaluation: MultiTaskDataset
    members: MultiTaskDataset  # samples the model trained on, for the membership attack

    @classmethod
    def draw(
        cls,
        split: TrainTestSplit,
        cfg: AuditConfig,
        seed: int,
        attacker_samples: int | None = None,
        members: MultiTaskDataset | None = None,
    ) -> AttackData:
        """``attacker_samples`` (default ``cfg.attacker_samples``) beyond the training set repeat images;
        ``members`` defaults to training images (right when the model trained on ``split.train``)."""
        # One generator per draw: the held-out set does not change with the attacker's budget.
        eval_rng, att_rng, member_rng = (torch.Generator().manual_seed(seed + k) for k in range(3))
        n_att = attacker_samples or cfg.attacker_samples
        n_eval = min(cfg.eval_samples, len(split.test))
        evaluation = split.test.subset(torch.randperm(len(split.test), generator=eval_rng)[:n_eval])
        rounds = -(-n_att // len(split.train))  # every image once before any repeats
        order = torch.cat([torch.randperm(len(split.train), generator=att_rng) for _ in range(rounds)])[:n_att]
        if members is None:
            members = split.train
        chosen = members.subset(torch.randperm(len(members), generator=member_rng)[:n_eval])
        return cls(split.train.subset(order), evaluation, chosen)


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
    cross, linear = (
        cross_task_attacks(
            att.numpy(),
            data.attacker.labels.numpy(),
            ev.numpy(),
            data.evaluation.labels.numpy(),
            names,
            kind,
            cfg.probe_hidden,
            cfg.probe_max_iter,
            seed,
        )
        for kind in ("mlp", "linear")
    )
    members = released_features(model.generator, data.members.images, model.feature_dp, seed + 303)
    membership = membership_auc(model.heads, members, data.members.labels, ev, data.evaluation.labels)
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
        "cross_task_attack_linear": linear,
        "reconstruction": reconstruction,
        "membership": membership,
        "distance_correlation": dcor,
        "attacker": {
            "train_samples": len(data.attacker),
            "eval_samples": len(data.evaluation),
            "knows": "released features, every task's labels and the images of its training samples",
            "probe": f"StandardScaler + MLP({cfg.probe_hidden}), {cfg.probe_max_iter} epochs (and a linear one)",
            "decoder": f"MLP(512, 512), {cfg.decoder_epochs} epochs, SSIM window {cfg.ssim_kernel} px (uniform)",
        },
    }
    return audit, recons
