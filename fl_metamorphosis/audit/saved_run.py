"""Audit a saved model (``metamorphosis audit RUN_OR_CHECKPOINT``) and export what a device would send.

A run folder of ``central`` holds ``model_<method>.ckpt``; one of ``simulate`` holds
``checkpoints/round_NNN.ckpt`` (the last one is audited). Every file carries its method and experiment,
so the held-out set, the attacker's data and the release are rebuilt exactly as in the run. Files are
read through ``fl_metamorphosis/checkpoint.py`` (weights only: a file never runs code).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointError, latest_run, load_model
from ..config import ConfigError, ExperimentConfig, build_config
from ..data import MultiTaskDataset, load_dataset
from ..methods import method_plan
from ..model import FeatureGenerator, build_heads
from ..training import released_features
from ..training.trainer import TrainedModel
from .run_audit import AttackData, audit_model, label_only_floor

MembersFn = Callable[[ExperimentConfig], MultiTaskDataset]


@dataclass
class SavedModel:
    method: str
    cfg: ExperimentConfig
    generator: FeatureGenerator
    heads: nn.ModuleList
    file: Path
    federated: bool  # a simulate checkpoint (its training pairs are the devices' own)


def _model_files(path: Path) -> tuple[list[Path], bool]:
    if path.is_file():
        return [path], path.parent.name == "checkpoints"
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} does not exist: pass a run folder or a .ckpt checkpoint")
    last = latest_run(path / "checkpoints")
    if last is not None:
        return [last], True
    models = sorted(path.glob("model_*.ckpt"))
    if models:
        return models, False
    raise ConfigError(
        f"{str(path)!r} holds no model_<method>.ckpt and no checkpoints/round_NNN.ckpt: "
        "pass the run folder of `metamorphosis central` or `simulate`, or one checkpoint file"
    )


def load_saved(path: Path) -> list[SavedModel]:
    files, federated = _model_files(Path(path))
    models = []
    for file in files:
        try:
            method, config, generator_state, heads_state = load_model(file)
        except CheckpointError as err:
            raise ConfigError(str(err)) from None
        cfg = build_config(config)
        data = load_dataset(cfg.data, cfg.train.seed).test
        num_classes = [t.num_classes for t in data.tasks]
        generator = FeatureGenerator(method, data.image_shape, len(data.tasks), cfg.model, num_classes)
        generator.load_state_dict(generator_state)
        heads = build_heads(generator.feature_shape, num_classes, cfg.model)
        heads.load_state_dict(heads_state)
        models.append(SavedModel(method, cfg, generator.eval(), heads.eval(), file, federated))
    return models


def server_seen_releases(cfg: ExperimentConfig, train_size: int) -> int:
    """How many released task-feature rows a federated server received over the whole training: each
    round's features query (and round 0's) asks every sampled device for ``feature_samples_per_device``,
    and no device releases more than ``max_releases_per_pair`` times each of its pairs; the devices hold
    ``train_size`` pairs between them (the loaded train split: a file dataset may have fewer images than
    ``data.train_pairs``)."""
    fed = cfg.federated
    sampled = max(1, round(fed.fraction_train * fed.num_devices))
    asked = fed.feature_samples_per_device * sampled * (fed.rounds + 1)
    cap = cfg.feature_dp.max_releases_per_pair
    return asked if cap is None else min(asked, cap * train_size)


def export_released(model: SavedModel, evaluation: MultiTaskDataset, file: Path, seed: int) -> None:
    """Released features of each task on ``evaluation``, every task's labels and the input images."""
    released = released_features(
        model.generator, evaluation.images, method_plan(model.cfg, model.method).feature_dp, seed
    )
    arrays: dict[str, Any] = {
        "images": evaluation.images.numpy(),
        "labels": evaluation.labels.numpy(),
        "task_names": np.array(evaluation.task_names),
        "method": np.array(model.method),
    }
    for t, name in enumerate(evaluation.task_names):
        arrays[f"features_{name}"] = released[:, t].numpy()
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(file, **arrays)


def audit_saved(
    models: list[SavedModel],
    attacker_samples: int | None = None,
    members: MembersFn | None = None,
    releases_per_pair: int = 1,
) -> tuple[dict[str, Any], AttackData, dict[str, dict[str, torch.Tensor]]]:
    """Audit every model against one held-out set; ``attacker_samples`` None: as many releases as a
    federated server saw (at least ``audit.attacker_samples``). ``members`` rebuilds the training pairs of a
    federated run (the devices' own), for the membership attack."""
    cfg = models[0].cfg
    split = load_dataset(cfg.data, cfg.train.seed)
    federated = models[0].federated
    # A central run has no server: its attacker gets audit.attacker_samples (stated in the figures).
    seen = server_seen_releases(cfg, len(split.train)) if federated else None
    n_att = attacker_samples or max(cfg.audit.attacker_samples, seen or 0)
    member_set = members(cfg) if (federated and members is not None) else None
    data = AttackData.draw(split, cfg.audit, cfg.train.seed, n_att, member_set)
    floors = label_only_floor(data, cfg.audit, cfg.train.seed)
    results, recons = {}, {}
    for m in models:
        trained = TrainedModel(m.method, m.generator, m.heads, method_plan(m.cfg, m.method).feature_dp)
        figures, recons[m.method] = audit_model(trained, data, m.cfg.audit, floors, m.cfg.train.seed, releases_per_pair)
        figures["attacker"]["server_saw_releases"] = seen
        figures["membership"]["members_are"] = (
            "the devices' training pairs" if member_set is not None else "images of the training set"
        )
        results[m.method] = {"checkpoint": str(m.file), **figures}
    return results, data, recons


def write_audit(source: Path, out: Path, export: Path | None = None, attacker_samples: int | None = None) -> dict:
    """The ``audit`` command: audit.json (``methods.M`` as in summary.json), report.md, plots, export."""
    from ..environment import machine_description
    from ..metrics import plot_attacks, plot_reconstruction_grid, render_report, write_json
    from ..privacy import account_release

    models = load_saved(source)
    members = None
    if models[0].federated:
        from ..data.partition import federated_training_pairs

        members = federated_training_pairs
    run_summary = _run_summary(source)
    # the most releases of one pair that the run's devices counted (1 for a central run)
    releases = int((run_summary.get("history") or [{}])[-1].get("releases_per_pair_max", 1) or 1)
    results, data, recons = audit_saved(models, attacker_samples, members, releases)
    for m in models:
        release = account_release(method_plan(m.cfg, m.method).feature_dp, len(data.evaluation.tasks), releases)
        trained = run_summary.get("methods", {}).get(m.method, {})
        results[m.method].update(
            dp_sgd=trained.get("dp_sgd", {"epsilon": None, "note": "no summary.json beside the model"}),
            feature_dp=release.as_dict() if release else {"enabled": False, "epsilon": None},
            wall_seconds=trained.get("wall_seconds"),
        )
    cfg = models[0].cfg
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": "audit",
        "source": str(source),
        "machine": machine_description(),
        "tasks": data.evaluation.task_names,
        "data": {"name": cfg.data.name, "train": cfg.data.train_pairs, "test": len(data.evaluation)},
        "methods": results,
        "plots": ["attacks.png", "reconstruction_grid.png"],
        "config": cfg.model_dump(),
    }
    write_json(out / "audit.json", summary)
    plot_attacks(results, out / "attacks.png")
    rows = {f"{method}: {t}": r for method, per_task in recons.items() for t, r in per_task.items()}
    plot_reconstruction_grid(data.evaluation.images, rows, out / "reconstruction_grid.png")
    (out / "report.md").write_text(render_report(summary))
    if export is not None:
        for m in models:
            target = export if len(models) == 1 else export.with_name(f"{export.stem}_{m.method}{export.suffix}")
            export_released(m, data.evaluation, target, cfg.train.seed + 404)
    return summary


def _run_summary(source: Path) -> dict[str, Any]:
    folder = source if source.is_dir() else source.parent
    for candidate in (folder / "summary.json", folder.parent / "summary.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return {}


def write_held_rows_audit(run_dir: Path, out: Path, sample: int | None) -> dict:
    """``audit RUN --held-rounds``: every feature query's rows of a simulate run attacked under that round's
    weights (``round_audit.py``), written as held_rows.json, round_attacks.png and held_rows.md in ``out``."""
    from ..metrics import write_json
    from ..metrics.round_plots import plot_round_attacks
    from .round_audit import MARGIN, audit_held_rows, held_rounds, render_round_audit

    last = latest_run(Path(run_dir) / "checkpoints")
    if last is None:
        raise ConfigError(f"{run_dir}: no checkpoints/round_NNN.ckpt: --held-rounds needs a simulate run folder")
    method, config, _, _ = load_model(last)
    cfg = ExperimentConfig.model_validate(config)
    split = load_dataset(cfg.data, cfg.train.seed)
    held = held_rounds(Path(run_dir))
    # the attacker learns on at least as many rows as the server received over the run (as in the run's audit)
    rows = max(cfg.audit.attacker_samples, int(_run_summary(Path(run_dir)).get("history", [{}])[-1].get(
        "feature_rows_received", 0)))  # fmt: skip
    data = AttackData.draw(split, cfg.audit, cfg.train.seed, rows)
    num_classes = [t.num_classes for t in split.test.tasks]

    def fresh() -> FeatureGenerator:
        return FeatureGenerator(method, split.test.image_shape, len(num_classes), cfg.model, num_classes)

    result = audit_held_rows(
        held, fresh, method_plan(cfg, method).feature_dp, data, cfg.audit, cfg.train.seed, sample=sample, progress=print
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "held_rows.json", result)
    if result["rounds"]:
        plot_round_attacks(result, out / "round_attacks.png", margin=MARGIN)
    (out / "held_rows.md").write_text("\n".join(render_round_audit(result)) + "\n")
    return result
