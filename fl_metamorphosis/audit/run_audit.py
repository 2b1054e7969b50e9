"""Run every attack against one trained model: what the privacy figures in a summary come from.

The attacker is given the released features of TRAINING images (``attacker_samples``, or more: callers
pass how many releases the server saw over the whole training, and training images are then drawn again,
each copy with fresh noise) together with their labels for every task and the images themselves, and is
scored on ``eval_samples`` held-out TEST images it never saw. The membership attack compares samples the
model trained on (``members``) with held-out images.

What the attacker knows is more than the protocol gives the server (which never receives images, and
whose task records are shuffled separately): rows aligned across tasks, every task's labels, and the
training images. Against that attacker:

* the cross-task headline is the strongest of several attacker families (``cross_task_probe.py``);
* the averaging attacker assumes the server can link the k releases of one pair (k: the most releases
  any pair had in the run) and averages them, on its training rows and on the held-out pairs;
* reconstruction is scored three ways: from the features, from the task's label alone (the floor), and
  from the features together with the label: features that add nothing to the label stay at the floor.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import AuditConfig
from ..data import MultiTaskDataset, TrainTestSplit
from ..training import released_features, task_accuracy
from ..training.trainer import TrainedModel
from .budget import epochs_within
from .cross_task_probe import MLP_BATCH, cross_task_attacks
from .dependence import dependence_report
from .membership_attack import membership_auc
from .reconstruction_attack import DECODER_BATCH, one_hot, reconstruction_attack


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
    """SSIM of the reconstruction decoder fed only each task's one-hot label (method-independent, so
    read from / written to ``cfg.cache_dir`` when set: every method of a comparison shares it)."""
    cached = _floor_file(data, cfg, seed)
    if cached is not None and cached.exists():
        return json.loads(cached.read_text())
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
            cfg.max_steps,
        )
        floors[task.name] = scores["ssim"]
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(floors))
        tmp.replace(cached)  # atomic: a concurrent run reads the old file or the whole new one
    return floors


def _floor_file(data: AttackData, cfg: AuditConfig, seed: int) -> Path | None:
    """The cache file of exactly these attacker and held-out samples and this decoder, or None."""
    if cfg.cache_dir is None:
        return None
    key = hashlib.sha256()
    for part in (data.attacker, data.evaluation):
        key.update(part.images.numpy().tobytes())
        key.update(part.labels.numpy().tobytes())
    key.update(repr((cfg.decoder_epochs, cfg.max_steps, cfg.ssim_kernel, seed)).encode())
    return Path(cfg.cache_dir) / f"label_only_floor_{key.hexdigest()[:20]}.json"


def averaged_releases(model: TrainedModel, images: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The mean of ``k`` independent releases of each image: what linking k releases of a pair gives."""
    total = None
    for copy in range(k):
        one = released_features(model.generator, images, model.feature_dp, seed + 1_000 * copy)
        total = one if total is None else total + one
    return total / k


def audit_model(
    model: TrainedModel,
    data: AttackData,
    cfg: AuditConfig,
    floors: dict[str, float],
    seed: int,
    releases_per_pair: int = 1,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The audit section of a method's summary, and each task's held-out reconstructions (for the grid).
    ``releases_per_pair`` > 1 (and feature noise on) adds the averaging attacker."""
    names = data.attacker.task_names
    # Distinct seeds: the attacker's copies carry fresh noise, as a second release of the image would.
    att = released_features(model.generator, data.attacker.images, model.feature_dp, seed + 101)
    ev = released_features(model.generator, data.evaluation.images, model.feature_dp, seed + 202)

    accuracies = task_accuracy(model.heads, ev, data.evaluation.labels)
    tasks = {
        name: {"accuracy": accuracies[t], "chance": data.evaluation.chance_level(t)} for t, name in enumerate(names)
    }
    cross = cross_task_attacks(
        att.numpy(), data.attacker.labels.numpy(), ev.numpy(), data.evaluation.labels.numpy(), names, cfg, seed
    )
    averaged = None
    k = releases_per_pair
    if k > 1 and model.feature_dp.enabled:
        # each averaged row costs the attacker k of the released rows it was given
        rows = max(1, len(data.attacker) // k)
        att_avg = averaged_releases(model, data.attacker.images[:rows], k, seed + 404)
        ev_avg = averaged_releases(model, data.evaluation.images, k, seed + 505)
        averaged = cross_task_attacks(
            att_avg.numpy(),
            data.attacker.labels[:rows].numpy(),
            ev_avg.numpy(),
            data.evaluation.labels.numpy(),
            names,
            cfg,
            seed,
        )
        for pair in averaged.values():
            pair["releases_averaged"] = k
            pair["train_rows"] = rows
    members = released_features(model.generator, data.members.images, model.feature_dp, seed + 303)
    membership = membership_auc(model.heads, members, data.members.labels, ev, data.evaluation.labels)
    reconstruction, recons = {}, {}
    for t, name in enumerate(names):
        scores, recons[name] = reconstruction_attack(
            att[:, t],
            data.attacker.images,
            ev[:, t],
            data.evaluation.images,
            cfg.decoder_epochs,
            cfg.ssim_kernel,
            seed,
            cfg.max_steps,
        )
        task = data.attacker.tasks[t]
        with_label, _ = reconstruction_attack(
            torch.cat([att[:, t].flatten(1), one_hot(data.attacker.labels[:, t], task.num_classes)], dim=1),
            data.attacker.images,
            torch.cat([ev[:, t].flatten(1), one_hot(data.evaluation.labels[:, t], task.num_classes)], dim=1),
            data.evaluation.images,
            cfg.decoder_epochs,
            cfg.ssim_kernel,
            seed,
            cfg.max_steps,
        )
        reconstruction[name] = {
            **scores,
            "ssim_label_only": floors[name],
            "ssim_features_and_label": with_label["ssim"],
            "psnr_features_and_label": with_label["psnr"],
        }
    n = min(cfg.dcor_samples, len(data.evaluation))
    dcor = dependence_report(ev[:n], data.evaluation.images[:n], names)
    n_att = len(data.attacker)
    mlp_epochs = epochs_within(n_att, MLP_BATCH, cfg.probe_max_iter, cfg.max_steps)
    decoder_epochs = epochs_within(n_att, DECODER_BATCH, cfg.decoder_epochs, cfg.max_steps)
    audit = {
        "tasks": tasks,
        "cross_task_attack": cross,
        "cross_task_attack_averaged": averaged,
        "reconstruction": reconstruction,
        "membership": membership,
        "distance_correlation": dcor,
        "attacker": {
            "train_samples": len(data.attacker),
            "eval_samples": len(data.evaluation),
            "knows": "released features of every task with rows aligned across tasks, every task's labels and "
            "the images of its training samples (more than the server receives: no images, tasks shuffled apart)",
            "probe": f"strongest of {', '.join(cfg.attackers)} (StandardScaler first; MLP({cfg.probe_hidden}) "
            f"{mlp_epochs} epochs; k-NN k={cfg.knn_neighbors}; boosting {cfg.boosting_max_iter} rounds; k-NN and "
            f"boosting on at most {cfg.max_rows} rows)",
            "averaging": f"links and averages the {k} releases of each pair"
            if averaged
            else "nothing to average: each pair was released at most once (k = 1), so the headline covers it",
            "decoder": f"MLP(512, 512), {decoder_epochs} epochs, SSIM window {cfg.ssim_kernel} px (uniform)",
        },
    }
    return audit, recons
