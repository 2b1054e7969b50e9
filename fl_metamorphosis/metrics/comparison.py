"""Many runs, one table: every figure of every method as mean and standard deviation over seeds.

The input is the ``methods.M`` sections of real run summaries (one summary per seed and method); the
output keeps ``summary.json``'s schema under ``methods.M``, with each number replaced by
``{"mean", "std", "values"}`` (``values`` per seed, in seed order) and each label kept when all seeds
agree. Per-round histories are left out: they stay in the runs' own folders.
"""

from __future__ import annotations

import statistics
from typing import Any

SKIP = {"history", "checkpoint", "device_privacy"}


def aggregate(values: list[Any]) -> Any:
    """Merge the same field of several runs: numbers -> stats, dicts -> per key, equal labels kept."""
    first = values[0]
    if isinstance(first, bool) or first is None:
        return first if all(v == first for v in values) else values
    if isinstance(first, int | float) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        floats = [float(v) for v in values]
        return {
            "mean": statistics.fmean(floats),
            "std": statistics.stdev(floats) if len(floats) > 1 else 0.0,
            "values": floats,
        }
    if isinstance(first, dict) and all(isinstance(v, dict) for v in values):
        keys = [k for k in first if k not in SKIP and all(k in v for v in values)]
        return {k: aggregate([v[k] for v in values]) for k in keys}
    return first if all(v == first for v in values) else values


def compare_methods(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """``runs[method][seed]`` is that run's ``methods.M`` figures; every method needs the same seeds."""
    seeds = sorted(next(iter(runs.values())))
    for method, per_seed in runs.items():
        if sorted(per_seed) != seeds:
            raise ValueError(f"method {method!r} ran seeds {sorted(per_seed)}, others {seeds}: compare like with like")
    return {
        "seeds": seeds,
        "methods": {method: aggregate([per_seed[s] for s in seeds]) for method, per_seed in runs.items()},
    }


def _ms(stat: Any, digits: int = 3) -> str:
    if not isinstance(stat, dict) or "mean" not in stat:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _chance(pair: dict[str, Any]) -> str:
    """Chance, and the label floor where the tasks are correlated (it is chance otherwise)."""
    floor = pair.get("label_floor")
    if isinstance(floor, dict) and floor["mean"] > pair["chance"]["mean"] + 0.01:
        return f"{_ms(pair['chance'], 2)}; label floor {_ms(floor, 2)}"
    return _ms(pair["chance"], 2)


def render_comparison(comparison: dict[str, Any], tasks: list[str], title: str) -> str:
    methods = comparison["methods"]
    pairs = [f"{t}->{s}" for t in tasks for s in tasks if s != t]
    lines = [
        f"# {title}",
        "",
        f"Mean ± standard deviation over seeds {comparison['seeds']}. Per-seed values in comparison.json.",
        "",
        "| method | "
        + " | ".join(f"acc {t}" for t in tasks)
        + " | "
        + " | ".join(f"attack {p} (chance)" for p in pairs)
        + " | "
        + " | ".join(f"SSIM {t} (label-only)" for t in tasks)
        + " | "
        + " | ".join(f"PSNR {t}" for t in tasks)
        + f" | dCor² {tasks[0]}~{tasks[1]} | membership AUC | DP-SGD eps | feature eps | seconds |",
        "|---|" + "---|" * (3 * len(tasks) + len(pairs) + 5),
    ]
    for name, m in methods.items():
        attack = m.get("cross_task_attack", {})
        recon = m.get("reconstruction", {})
        dcor = m.get("distance_correlation", {})
        cells = [_ms(m["tasks"][t]["accuracy"]) for t in tasks]
        cells += [f"{_ms(attack[p]['accuracy'])} ({_chance(attack[p])})" for p in pairs]
        cells += [f"{_ms(recon[t]['ssim'])} ({_ms(recon[t]['ssim_label_only'])})" for t in tasks]
        cells += [_ms(recon[t]["psnr"], 2) for t in tasks]
        cross_dcor = next((v for k, v in dcor.items() if "~" in k and "input" not in k), None)
        cells += [
            _ms(cross_dcor),
            _ms(m.get("membership", {}).get("auc")),
            _ms(m.get("dp_sgd", {}).get("epsilon"), 2),
            _ms(m.get("feature_dp", {}).get("epsilon"), 1),
            _ms(m.get("wall_seconds"), 0),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Headline attacker per pair (the strongest family, as picked in each seed's run):", ""]
    for name, m in methods.items():
        picked = ", ".join(f"{p} {m['cross_task_attack'][p].get('attacker')}" for p in pairs)
        lines.append(f"- {name}: {picked}")
    averaged = [
        f"- {name}: " + ", ".join(f"{p} {_ms(v['accuracy'])}" for p, v in m["cross_task_attack_averaged"].items())
        for name, m in methods.items()
        if isinstance(m.get("cross_task_attack_averaged"), dict)
    ]
    if averaged:
        lines += ["", "Averaging attacker (links and averages the releases of each pair):", "", *averaged]
    with_label = [
        f"- {name}: "
        + ", ".join(
            f"{t} {_ms(m['reconstruction'][t].get('ssim_features_and_label'))} "
            f"(label only {_ms(m['reconstruction'][t]['ssim_label_only'])})"
            for t in tasks
        )
        for name, m in methods.items()
    ]
    lines += ["", "Reconstruction SSIM from features + the task's own label:", "", *with_label]
    return "\n".join(lines) + "\n"
