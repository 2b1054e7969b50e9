"""``metamorphosis compare``: every method, several seeds, one federated pipeline, one table.

Each (method, seed) is one ``simulate`` run in ``OUT/runs/<method>_seed<S>``: the same devices, data
partition, encoder, heads, DP-SGD budget and rounds; only the feature-generation method differs. Each run
is audited by the library (its attacker learns on at least as many released features as the server
received over the whole training). A finished run is reused when the command is run again with the same
experiment, so an interrupted comparison resumes; ``comparison.json`` and ``comparison.md`` are rewritten
after every run. ``--sweep KEY=V1,V2`` runs the given methods again for each value (first seed only).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fl_metamorphosis.audit.saved_run import server_seen_releases
from fl_metamorphosis.checkpoint import latest_run
from fl_metamorphosis.config import ConfigError, DataConfig, ExperimentConfig, build_config
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.deployment.flower_processes import stop_processes
from fl_metamorphosis.environment import machine_description
from fl_metamorphosis.metrics import write_json
from fl_metamorphosis.metrics.comparison import compare_methods, render_comparison
from fl_metamorphosis.metrics.comparison_plots import (
    plot_frontier,
    plot_image_panels,
    plot_privacy_utility,
    plot_sweep,
)
from fl_metamorphosis.metrics.frontier import render_frontier
from fl_metamorphosis.tracking import TrackedRun, config_params, params_of

from .simulate import APP_DIR, simulate
from .warm_runtime import WarmRuntime

# The comparison's own defaults (before the user's --set): every run must fit the hour on two cores, so
# 10 rounds (what 10 rounds cost in accuracy against 30: docs/comparison.md, docs/federated.md). The
# devices' release gate is off: a comparison measures what each method's own features give away, and the
# gate would withhold every leaking method's features outright (its heads would learn nothing); a user's
# --set release_gate.enabled=true compares gated runs instead (docs/privacy.md).
COMPARE_DEFAULTS = ["federated.rounds=10", "release_gate.enabled=false"]
# --quick: the tiny federation shared with the tests.
TINY_PRESET = APP_DIR / "configs" / "tiny.toml"


def run_config(
    cfg: ExperimentConfig, method: str, seed: int, extra: list[str] | None = None, out: Path | None = None
) -> ExperimentConfig:
    """``cfg`` for one run: one method, one seed, an attacker that sees what the server saw, and the
    label-only floor shared through ``out/cache`` (it does not depend on the method)."""
    tree = cfg.model_dump()
    tree["methods"] = [method]
    tree["train"]["seed"] = seed
    one = build_config(tree, extra or [])
    tree = one.model_dump()
    train_size = _train_size(one.data.model_dump_json(), seed)
    tree["audit"]["attacker_samples"] = max(one.audit.attacker_samples, server_seen_releases(one, train_size))
    if out is not None:
        tree["audit"]["cache_dir"] = str((out / "cache").resolve())
    return build_config(tree)


COMPARE_FILES = ("comparison.md", "comparison.json", "sweep.md", "sweep.json", "*.png")


@functools.cache
def _train_size(data_json: str, seed: int) -> int:
    """The train split's size, loaded once per dataset and seed: every method (and swept value) of a
    comparison asks for it, and loading a file dataset reads its label file and image cache."""
    return len(load_dataset(DataConfig.model_validate_json(data_json), seed).train)


def run_or_reuse(
    cfg: ExperimentConfig,
    out: Path,
    echo: Callable[[str], None],
    app_dir: Path,
    cores: int | None = None,
    runtime: WarmRuntime | None = None,
    tracking_parent: TrackedRun | None = None,
) -> dict[str, Any]:
    """One simulate run (on ``runtime``, the caller's warm runtime, if given): the finished one already in
    ``out`` for the same experiment, the interrupted one resumed from its last checkpoint, or a new one
    (tracked under ``tracking_parent``, a sweep's or comparison's tracked run)."""
    summary_file = out / "summary.json"
    stop_processes((out / ".flwr").resolve())  # a killed launcher's Flower may still be running this run
    if summary_file.exists():
        done = json.loads(summary_file.read_text())
        same = {k: v for k, v in (done.get("config") or {}).items() if k != "tracking"} == cfg.experiment_dump()
        if same and ("methods" in done or not cfg.audit.enabled):
            echo(f"  reusing the finished run in {out}")
            return done
    config_file = out / "config.json"
    resume = (
        latest_run(out / "checkpoints") is not None
        and config_file.exists()
        and ExperimentConfig.model_validate_json(config_file.read_text()).experiment_dump() == cfg.experiment_dump()
    )
    if resume:
        echo(f"  resuming the interrupted run in {out}")
    started = time.perf_counter()
    simulate(cfg, out, echo=echo, app_dir=app_dir, resume=resume, cores=cores, runtime=runtime,
             tracking_parent=tracking_parent)  # fmt: skip
    summary = json.loads(summary_file.read_text())
    summary["launcher_wall_seconds"] = time.perf_counter() - started
    return summary


def compare(
    cfg: ExperimentConfig,
    out: Path,
    methods: list[str],
    seeds: list[int],
    echo: Callable[[str], None] = print,
    app_dir: Path = APP_DIR,
) -> dict[str, Any]:
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds {seeds}: give distinct seeds")
    for method in methods:  # every run's config is valid before the first one starts
        run_config(cfg, method, seeds[0])
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    tasks: list[str] = []
    grids: dict[str, Path] = {}
    comparison: dict[str, Any] = {}
    params = {**config_params(cfg), **params_of({"methods": methods, "seeds": seeds}, "compare.")}
    with (
        WarmRuntime(out / ".runtime", app_dir=app_dir) as runtime,
        TrackedRun(out, cfg, title=f"compare {out.name}", params=params, resume=True, files=COMPARE_FILES) as parent,
    ):
        for seed in seeds:
            for method in methods:
                echo(f"[compare] {method}, seed {seed} ({len(methods) * len(seeds)} runs in all)")
                run_out = out / "runs" / f"{method}_seed{seed}"
                run_cfg = run_config(cfg, method, seed, out=out)
                summary = run_or_reuse(run_cfg, run_out, echo, app_dir, runtime=runtime, tracking_parent=parent)
                figures = summary["methods"][method]
                figures["wall_seconds"] = summary.get("server_wall_seconds", figures.get("wall_seconds"))
                runs.setdefault(method, {})[seed] = figures
                tasks = summary["tasks"]
                grids.setdefault(method, run_out / "reconstruction_grid.png")
            done = {m: r for m, r in runs.items() if len(r) == len(runs[methods[0]])}
            comparison = _write(cfg, out, done, tasks, grids)
    return comparison


def _write(cfg, out: Path, runs, tasks: list[str], grids: dict[str, Path]) -> dict[str, Any]:
    comparison = compare_methods(runs)
    comparison.update(
        command="compare",
        machine=machine_description(),
        tasks=tasks,
        federated={
            "devices": cfg.federated.num_devices,
            "rounds": cfg.federated.rounds,
            "partitioning": cfg.federated.partitioning,
            "dirichlet_alpha": cfg.federated.dirichlet_alpha,
            "strategy": cfg.federated.strategy.name,
        },
        runs={m: {str(s): f"runs/{m}_seed{s}" for s in per_seed} for m, per_seed in runs.items()},
        plots=["privacy_utility.png", "reconstruction_grids.png"],
        config=cfg.model_dump(),
    )
    write_json(out / "comparison.json", comparison)
    title = (
        f"Comparison: {len(runs)} methods, {cfg.federated.num_devices} devices, {cfg.federated.partitioning}, "
        f"{cfg.federated.rounds} rounds"
    )
    (out / "comparison.md").write_text(render_comparison(comparison, tasks, title))
    plot_privacy_utility(comparison, tasks, out / "privacy_utility.png")
    plot_image_panels({m: grids[m] for m in runs if grids[m].exists()}, out / "reconstruction_grids.png")
    return comparison


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    sweeps = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--sweep {item!r}: write KEY=V1,V2,... e.g. dp_sgd.target_epsilon=2,4,8")
        sweeps.append((key.strip(), [v.strip() for v in values.split(",") if v.strip()]))
    return sweeps


def sweep(
    cfg: ExperimentConfig,
    out: Path,
    methods: list[str],
    seed: int,
    sweeps: list[tuple[str, list[str]]],
    echo: Callable[[str], None] = print,
    app_dir: Path = APP_DIR,
) -> list[dict[str, Any]]:
    """Each method for each swept value; rows with the measured epsilons, utility and attacks. The key
    ``method`` sweeps the method itself (``method=metamorphosis,metamorphosis_adversarial``), at the
    configuration's settings, so that variants sit on the same frontier as the settings."""
    configs = [
        (key, v, v, run_config(cfg, v, seed, [], out))
        if key == "method"  # the method itself swept, e.g. against its own variants at default settings
        else (key, v, m, run_config(cfg, m, seed, [f"{key}={v}"], out))
        for key, vs in sweeps
        for v in vs
        for m in ([None] if key == "method" else methods)
    ]
    rows: list[dict[str, Any]] = []
    tasks: list[str] = []
    params = {**config_params(cfg), **params_of({"sweep": sweeps, "methods": methods}, "compare.")}
    with (
        WarmRuntime(out / ".runtime", app_dir=app_dir) as runtime,
        TrackedRun(out, cfg, title=f"compare {out.name}", params=params, resume=True, files=COMPARE_FILES) as parent,
    ):
        for key, value, method, run_cfg in configs:
            echo(f"[sweep] {key}={value}, {method}")
            run_out = out / "sweep" / f"{key}={value}_{method}"
            summary = run_or_reuse(run_cfg, run_out, echo, app_dir, runtime=runtime, tracking_parent=parent)
            m, tasks = summary["methods"][method], summary["tasks"]
            dp_eps, feature_eps = m["dp_sgd"].get("epsilon"), m["feature_dp"].get("epsilon")
            measured = dp_eps if key.startswith("dp_sgd") else feature_eps if key.startswith("feature_dp") else None
            rows.append(
                {
                    "method": method,
                    "key": key,
                    "set": value,
                    # x axis: the epsilon the swept mechanism actually spent (the set value where it has none)
                    "value": measured if measured is not None else _number_or_text(value),
                    "dp_sgd_epsilon": dp_eps,
                    "feature_epsilon": feature_eps,
                    "accuracy": {t: m["tasks"][t]["accuracy"] for t in tasks},
                    "attack": {p: v["accuracy"] for p, v in m["cross_task_attack"].items()},
                    "attack_floor": {
                        p: max(v["chance"], v.get("label_floor") or 0.0) for p, v in m["cross_task_attack"].items()
                    },
                    "ssim": {t: m["reconstruction"][t]["ssim"] for t in tasks},
                    "ssim_features_and_label": {t: m["reconstruction"][t]["ssim_features_and_label"] for t in tasks},
                    "ssim_label_only": {t: m["reconstruction"][t]["ssim_label_only"] for t in tasks},
                }
            )
            write_json(out / "sweep.json", {"seed": seed, "rows": rows})
            (out / "sweep.md").write_text(render_frontier(rows, f"Sweep, seed {seed}: privacy-utility frontier"))
    plot_sweep(rows, tasks, out / "sweep.png")
    plot_frontier(rows, out / "frontier.png")
    return rows


def _number_or_text(value: str) -> float | str:
    """A swept value as a number when it is one (a plotted axis), else as written (a category)."""
    try:
        return float(value)
    except ValueError:
        return value
