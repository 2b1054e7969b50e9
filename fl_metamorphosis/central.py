"""The centralized run: train universal and MetaMorphosis at the same DP-SGD budget, audit both, report.

Everything lands in the run folder as it happens: ``metrics.jsonl`` (a row per epoch), then
``summary.json`` (schema in docs/summary.md), ``report.md`` and the PNG plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from . import audit as attacks  # lazy names: the ServerApp of a run without the audit imports this module
from .checkpoint import save_model
from .config import ConfigError, ExperimentConfig
from .data import load_dataset
from .environment import machine_description
from .metrics import (
    JsonlWriter,
    plot_attacks,
    plot_reconstruction_grid,
    plot_training_curves,
    render_report,
    write_json,
)
from .privacy import account_release
from .training.trainer import EpochCallback, TrainedModel, train_method

SUMMARY_VERSION = 2


def randomness_summary(cfg: ExperimentConfig) -> dict[str, Any]:
    """Where the privacy noise came from, and whether the server could have reproduced it."""
    secret = cfg.randomness.source == "os_entropy"
    return {
        "source": cfg.randomness.source,
        "private_against_server": secret,
        "note": "OS CSPRNG on the device" if secret else "seeded from the config: NOT private against the server",
    }


def method_summary(model: TrainedModel, audit: dict, num_tasks: int, releases_per_pair: int = 1) -> dict[str, Any]:
    feature = account_release(model.feature_dp, num_tasks, releases_per_pair)
    return {
        **audit,
        "dp_sgd": model.dp_sgd,
        "feature_dp": feature.as_dict() if feature else {"enabled": False, "epsilon": None},
        "wall_seconds": model.wall_seconds,
        "history": model.history,
    }


def claim_checks(methods: dict[str, Any], tasks: list[str]) -> list[dict[str, Any]]:
    """The issue's thresholds, evaluated on the measured figures (shown in the report, not enforced)."""
    if not {"universal", "metamorphosis"} <= methods.keys():
        return []
    u, m = methods["universal"], methods["metamorphosis"]
    checks = []

    def add(check: str, passed: bool, detail: str) -> None:
        checks.append({"check": check, "passed": bool(passed), "detail": detail})

    eps = [x["dp_sgd"]["epsilon"] for x in (u, m) if x["dp_sgd"]["epsilon"] is not None]
    add("DP-SGD epsilon <= 8", bool(eps) and max(eps) <= 8, f"max {max(eps):.2f}" if eps else "DP-SGD off")
    for t in tasks:
        a_m, a_u = m["tasks"][t]["accuracy"], u["tasks"][t]["accuracy"]
        add(
            f"{t}: accuracy >= 0.85 and within 5 points of universal",
            a_m >= 0.85 and a_u - a_m <= 0.05,
            f"{a_m:.3f} vs {a_u:.3f}",
        )
    for pair, r in m["cross_task_attack"].items():
        add(
            f"{pair}: attack <= chance + 0.10",
            r["accuracy"] <= r["chance"] + 0.10,
            f"{r['accuracy']:.3f} (chance {r['chance']:.3f}); universal {u['cross_task_attack'][pair]['accuracy']:.3f}",
        )
        add(
            f"{pair}: attack on universal >= 0.60",
            u["cross_task_attack"][pair]["accuracy"] >= 0.60,
            f"{u['cross_task_attack'][pair]['accuracy']:.3f}",
        )
    for t in tasks:
        r_m, r_u = m["reconstruction"][t], u["reconstruction"][t]
        add(
            f"{t}: reconstruction SSIM <= label-only floor + 0.05",
            r_m["ssim"] <= r_m["ssim_label_only"] + 0.05,
            f"{r_m['ssim']:.3f} vs floor {r_m['ssim_label_only']:.3f}",
        )
        add(
            f"{t}: universal reconstructs clearly above the floor",
            r_u["ssim"] > r_u["ssim_label_only"] + 0.05,
            f"{r_u['ssim']:.3f} vs floor {r_u['ssim_label_only']:.3f}",
        )
    return checks


def run_central(cfg: ExperimentConfig, out: Path, on_epoch: EpochCallback | None = None, on_stage=None) -> dict:
    """Train, audit and report every configured method; return the summary written to ``out``."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    write_json(out / "config.json", cfg.model_dump())
    stage = on_stage or (lambda _msg: None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    split = load_dataset(cfg.data, cfg.train.seed)
    tasks = split.train.task_names
    side = min(split.train.image_shape[1:])
    if cfg.audit.ssim_kernel > side:  # known only once the data is loaded; fail before training, not after
        raise ConfigError(f"audit.ssim_kernel={cfg.audit.ssim_kernel} is wider than the {side}-px images: lower it")
    metrics = JsonlWriter(out / "metrics.jsonl")

    def log_epoch(row: dict) -> None:
        metrics.write(row)
        if on_epoch:
            on_epoch(row)

    attack_data = attacks.AttackData.draw(split, cfg.audit, cfg.train.seed)
    stage("label-only reconstruction floor")
    floors = attacks.label_only_floor(attack_data, cfg.audit, cfg.train.seed)
    methods: dict[str, Any] = {}
    grid_rows: dict[str, torch.Tensor] = {}
    for method in cfg.methods:
        stage(f"training {method}")
        model = train_method(method, split, cfg, log_epoch)
        stage(f"auditing {method}")
        audit, recons = attacks.audit_model(model, attack_data, cfg.audit, floors, cfg.train.seed)
        methods[method] = method_summary(model, audit, len(tasks))
        grid_rows.update({f"{method}: {t}": r for t, r in recons.items()})
        config = json.loads(cfg.model_dump_json())
        save_model(out / f"model_{method}.ckpt", method, model.generator.state_dict(), model.heads.state_dict(), config)

    summary = {
        "summary_version": SUMMARY_VERSION,
        "command": "central",
        "machine": machine_description(),
        "tasks": tasks,
        "data": {"name": cfg.data.name, "train": len(split.train), "test": len(split.test), "skipped": split.skipped},
        "methods": methods,
        "checks": claim_checks(methods, tasks),
        "randomness": randomness_summary(cfg),
        "plots": ["training_curves.png", "attacks.png", "reconstruction_grid.png"],
        "wall_seconds": time.perf_counter() - started,
        "config": cfg.model_dump(),
    }
    write_json(out / "summary.json", summary)
    rows = [h for m in methods.values() for h in m["history"]]
    plot_training_curves(rows, tasks, out / "training_curves.png")
    plot_reconstruction_grid(attack_data.evaluation.images, grid_rows, out / "reconstruction_grid.png")
    plot_attacks(methods, out / "attacks.png")
    (out / "report.md").write_text(render_report(summary))
    return summary
