"""``metamorphosis sweep --search``: an Optuna study over one strategy's parameters instead of a grid.

Each trial is an ordinary ``simulate`` run in ``OUT/search/trial-<n>`` with the parameters Optuna's TPE
sampler proposes (log-uniform in each ``[low, high]`` range). After every round the run's test accuracy
(mean over tasks) is reported to the trial, and from the third round on Optuna's median pruner stops
a trial whose accuracy falls below the median of the earlier trials at the same round: the run is
stopped there, its folder keeps the rounds it did. The study lives in ``OUT/search/study.db``
(SQLite), so a search that is interrupted and started again goes on to its number of trials; a trial
that was running when it was interrupted is marked failed and not counted. ``search.json``,
``search.md`` and the study's plots are rewritten after every trial.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from fl_metamorphosis.config import ConfigError, ExperimentConfig, build_config
from fl_metamorphosis.deployment.flower_processes import RunFailed
from fl_metamorphosis.environment import machine_description
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.metrics import read_jsonl, write_json
from fl_metamorphosis.metrics.plots import plt
from fl_metamorphosis.metrics.sweep_report import cell_figures
from fl_metamorphosis.tracking import TrackedRun, config_params, params_of

from .compare import run_config
from .simulate import APP_DIR, simulate
from .sweep_config import SearchConfig, SweepConfig, cell_overrides
from .warm_runtime import WarmRuntime

STUDY = "search"
SEARCH_FILES = ("search.md", "search.json", "*.png")


def _trial_config(search: SearchConfig, base: ExperimentConfig, params: dict[str, float]) -> ExperimentConfig:
    overrides = cell_overrides(search.strategy, params, search.partitioning, None, search.attack)
    try:
        return build_config(base.model_dump(), [*search.set, *overrides, f"train.seed={search.seed}"])
    except ConfigError as err:
        raise ConfigError(f"search trial {params}: {err}") from None


def _round_reporter(trial: optuna.Trial, metrics: Path, echo: Callable[[str], None]) -> Callable[[str], None]:
    """An echo that reports each finished round's accuracy to ``trial`` and stops the run if pruned."""
    reported: set[int] = set()

    def report(line: str) -> None:
        echo(line)
        if not line.startswith("[round") or not metrics.exists():
            return
        for row in read_jsonl(metrics):
            if row["round"] in reported:
                continue
            reported.add(row["round"])
            accs = [v for k, v in row.items() if k.startswith("test_acc.")]
            trial.report(sum(accs) / len(accs), row["round"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"round {row['round']}: below the median of earlier trials")

    return report


def _summarise(study: optuna.Study, search: SearchConfig, out: Path) -> dict[str, Any]:
    trials = []
    for t in study.trials:
        trials.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "value": t.value,
                "rounds_reported": len(t.intermediate_values),
                "accuracy_per_round": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                "run": f"search/trial-{t.number}",
                **t.user_attrs,
            }
        )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if done else None
    report = {
        "command": "sweep --search",
        "machine": machine_description(),
        "search": search.model_dump(),
        "trials": trials,
        "best": {"number": best.number, "params": best.params, "accuracy": best.value} if best else None,
        "plots": [],
    }
    if len(done) >= 2:
        from optuna.visualization.matplotlib import plot_optimization_history, plot_slice

        for name, plot in (("search_history.png", plot_optimization_history), ("search_slice.png", plot_slice)):
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
            fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
            fig.set_size_inches(10, 4)
            fig.tight_layout()
            fig.savefig(out / name, dpi=120)
            plt.close(fig)
            report["plots"].append(name)
    write_json(out / "search.json", report)
    (out / "search.md").write_text(render_search(report))
    return report


def render_search(report: dict[str, Any]) -> str:
    s = report["search"]
    lines = [f"# Search: {s['strategy']} over {', '.join(s['ranges'])} ({len(report['trials'])} trials)", ""]
    lines += [
        f"Machine: {report['machine']}. Partitioning {s['partitioning']}, attack {s['attack']}, seed {s['seed']}.",
        "",
    ]
    if report["best"]:
        b = report["best"]
        params = ", ".join(f"{k}={v:.4g}" for k, v in b["params"].items())
        lines += [f"**Best: trial {b['number']}, {params}: final accuracy {b['accuracy']:.3f}**", ""]
    lines += ["| trial | state | " + " | ".join(s["ranges"]) + " | final accuracy | rounds | epsilon |"]
    lines += ["|---" * (len(s["ranges"]) + 5) + "|"]
    for t in sorted(report["trials"], key=lambda t: -(t["value"] or -1)):
        params = " | ".join(f"{t['params'].get(k, float('nan')):.4g}" for k in s["ranges"])
        value = f"{t['value']:.3f}" if t["value"] is not None else "-"
        if t["state"] == "pruned" and t["value"] is not None:
            value = f"{value} (when pruned)"
        eps = f"{t['epsilon']:.2f}" if t.get("epsilon") is not None else "-"
        lines.append(f"| {t['number']} | {t['state']} | {params} | {value} | {t['rounds_reported']} | {eps} |")
    lines += ["", "Plots: " + (", ".join(f"`{p}`" for p in report["plots"]) or "none yet (2 complete trials)"), ""]
    return "\n".join(lines)


def run_search(
    sweep_cfg: SweepConfig,
    base: ExperimentConfig,
    out: Path,
    echo: Callable[[str], None] = print,
    app_dir: Path = APP_DIR,
) -> dict[str, Any]:
    search = sweep_cfg.search
    assert search is not None
    for name, (low, high) in search.ranges.items():
        if not 0 < low < high:
            raise ConfigError(f"search.ranges.{name}=[{low}, {high}]: give 0 < low < high (sampled log-uniform)")
    _trial_config(search, base, {k: lo for k, (lo, _) in search.ranges.items()})  # refuse bad keys up front
    out.mkdir(parents=True, exist_ok=True)
    (out / "search").mkdir(exist_ok=True)
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{(out / 'search' / 'study.db').resolve()}",
        load_if_exists=True,
        direction="maximize",
        # accuracy after one or two rounds is mostly noise: a trial is judged from its third round on
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
    )
    # a resumed study's sampler must not replay the first run's draws: seed it past the trials it has
    study.sampler = optuna.samplers.TPESampler(seed=search.seed + len(study.trials))
    for t in study.trials:  # interrupted mid-trial: not a result
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    left = search.trials - sum(1 for t in study.trials if t.state in counted)
    echo(f"[search] {search.strategy}: {left} of {search.trials} trials to run -> {out}")

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_float(k, lo, hi, log=True) for k, (lo, hi) in search.ranges.items()}
        run_out = out / "search" / f"trial-{trial.number}"
        cfg = run_config(_trial_config(search, base, params), method_plan(base).name, search.seed, out=out)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in params.items())
        echo(f"[search] trial {trial.number}: {shown}")
        prefix = lambda line: echo(f"[trial {trial.number}] {line}")  # noqa: E731
        started = time.perf_counter()
        report = _round_reporter(trial, run_out / "metrics.jsonl", prefix)
        trial_params = {"trial.number": str(trial.number), **{f"trial.{k}": repr(v) for k, v in params.items()}}
        simulate(cfg, run_out, echo=report, app_dir=app_dir, runtime=runtime, tracking_parent=tracked,
                 tracking_params=trial_params)  # fmt: skip
        figures = cell_figures(json.loads((run_out / "summary.json").read_text()))
        trial.set_user_attr("epsilon", figures["epsilon"])
        trial.set_user_attr("cross_task_attack", figures["cross_task_attack"])
        trial.set_user_attr("launcher_seconds", time.perf_counter() - started)
        return figures["mean_accuracy"]

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        echo(f"[search] trial {trial.number} {trial.state.name.lower()}: {trial.value}")
        _summarise(study, search, out)

    if left > 0:
        timeout = search.minutes * 60 if search.minutes else None
        # a run that fails is a failed trial (Optuna records it), not the end of the study
        params = {**config_params(base), **params_of(search.model_dump(), "search.")}
        title = f"search {out.name}"
        with (
            TrackedRun(out, base, title=title, params=params, resume=True, files=SEARCH_FILES) as tracked,
            WarmRuntime(out / ".runtime", app_dir=app_dir) as runtime,
        ):
            study.optimize(objective, n_trials=left, timeout=timeout, callbacks=[after_trial], catch=(RunFailed,))
    return _summarise(study, search, out)
