"""A sweep's figures: per cell from its run summary, pooled over seeds per setting, an answer per scenario.

A *setting* is a cell without its seed (strategy and parameters, partitioning, budget, attack); a
*scenario* is what a user cannot choose but must plan for (partitioning, budget, attack). For each
scenario the recommendation is the setting with the highest final accuracy (mean over tasks, then over
seeds), next to the runner-up. With a handful of seeds a standard deviation says little, so the answer
says whether the two settings' seed ranges overlap: when they do, the seeds cannot tell them apart.
An attack's cost is the accuracy a setting loses against the same setting without the attack.
"""

from __future__ import annotations

import statistics
from typing import Any


def cell_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of one finished run (``summary.json`` of ``simulate``). A run without the audit
    (``audit.enabled = false``) has no attack or SSIM figures, and its final accuracy is its last round's
    on the server's held-out set."""
    tasks = summary["tasks"]
    audited = "methods" in summary
    m = summary["methods"][next(iter(summary["methods"]))] if audited else {}
    if audited:
        accuracy = {t: m["tasks"][t]["accuracy"] for t in tasks}
    else:
        accuracy = {t: summary["history"][-1][f"test_acc.{t}"] for t in tasks}
    curve, simulated = [], 0.0
    for row in summary["history"]:
        simulated += row.get("fleet.round_seconds", 0.0)
        point = {"round": row["round"], "accuracy": statistics.fmean(row[f"test_acc.{t}"] for t in tasks)}
        if "fleet.round_seconds" in row:
            point["simulated_seconds"] = simulated
        curve.append(point)
    attacks = m.get("cross_task_attack", {})
    return {
        "accuracy": accuracy,
        "mean_accuracy": statistics.fmean(accuracy.values()),
        "curve": curve,
        "epsilon": (m["dp_sgd"] if audited else summary["dp_sgd"]).get("epsilon"),
        "audited": audited,
        "cross_task_attack": {p: v["accuracy"] for p, v in attacks.items()},
        "cross_task_chance": {p: v["chance"] for p, v in attacks.items()},
        "ssim": {t: m["reconstruction"][t]["ssim"] for t in tasks} if audited else {},
        "poisoned_devices": summary.get("federated", {}).get("poisoning", {}).get("devices", []),
        "server_wall_seconds": summary.get("server_wall_seconds"),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def pool_settings(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells with figures, pooled over seeds per setting (in the order the settings first appear)."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        if cell.get("figures"):
            by_setting.setdefault(cell["setting"], []).append(cell)
    pooled = []
    for setting, group in by_setting.items():
        first, figs = group[0], [c["figures"] for c in group]
        rounds = min(len(f["curve"]) for f in figs)
        curve = [statistics.fmean(f["curve"][i]["accuracy"] for f in figs) for i in range(rounds)]
        pairs = list(figs[0]["cross_task_attack"])
        audited = all(f.get("audited", True) for f in figs)
        pooled.append(
            {
                "setting": setting,
                **{k: first[k] for k in ("blocks", "strategy", "params", "partitioning", "budget", "attack")},
                "seeds": [c["seed"] for c in group],
                "accuracy": _spread([f["mean_accuracy"] for f in figs]),
                "curve": curve,
                "simulated_seconds": [
                    statistics.fmean(f["curve"][i].get("simulated_seconds", 0.0) for f in figs) for i in range(rounds)
                ]
                if "simulated_seconds" in figs[0]["curve"][0]
                else None,
                "epsilon": max((f["epsilon"] or 0.0) for f in figs),
                # privacy figures only where every seed was audited (None: not measured)
                "cross_task_attack": {p: statistics.fmean(f["cross_task_attack"][p] for f in figs) for p in pairs}
                if audited
                else {},
                "cross_task_chance": {p: statistics.fmean(f["cross_task_chance"][p] for f in figs) for p in pairs}
                if audited
                else {},
                "ssim": statistics.fmean(statistics.fmean(f["ssim"].values()) for f in figs) if audited else None,
            }
        )
    return pooled


def scenario(setting: dict[str, Any]) -> str:
    parts = [setting["partitioning"]]
    if setting["budget"] is not None:
        parts.append(f"eps={setting['budget']:g}")
    parts.append("no attack" if setting["attack"] == "none" else setting["attack"])
    return ", ".join(parts)


def strategy_label(setting: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting["params"])
    return f"{setting['strategy']}({params})" if params else setting["strategy"]


def _separated(best: dict[str, Any], runner: dict[str, Any] | None) -> bool:
    """The best setting's worst seed beat the runner-up's best seed (one seed each separates nothing)."""
    if runner is None or len(best["seeds"]) < 2 or len(runner["seeds"]) < 2:
        return False
    return best["accuracy"]["min"] > runner["accuracy"]["max"]


def recommend(pooled: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario: the best setting by mean final accuracy, the runner-up, and whether they differ by
    more than their seeds spread (``_separated``)."""
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for s in pooled:
        by_scenario.setdefault(scenario(s), []).append(s)
    answers = []
    for name, group in by_scenario.items():
        ranked = sorted(group, key=lambda s: s["accuracy"]["mean"], reverse=True)
        best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None
        answers.append(
            {
                "scenario": name,
                "best": best["setting"],
                "best_label": strategy_label(best),
                "best_accuracy": best["accuracy"],
                "runner_up": runner["setting"] if runner else None,
                "runner_up_label": strategy_label(runner) if runner else None,
                "runner_up_accuracy": runner["accuracy"] if runner else None,
                "gap": best["accuracy"]["mean"] - runner["accuracy"]["mean"] if runner else None,
                "separated": _separated(best, runner),
                "settings_compared": len(group),
                "seeds": len(best["seeds"]),
                "epsilon": best["epsilon"],
                "cross_task_attack": best["cross_task_attack"],
                "ssim": best["ssim"],
            }
        )
    return answers


def attack_costs(pooled: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each attacked setting against the same setting without the attack, when the sweep has both."""
    clean = {(s["strategy"], s["params"], s["partitioning"], s["budget"]): s for s in pooled if s["attack"] == "none"}
    rows = []
    for s in pooled:
        base = clean.get((s["strategy"], s["params"], s["partitioning"], s["budget"]))
        if s["attack"] == "none" or base is None:
            continue
        rows.append(
            {
                "strategy": strategy_label(s),
                "scenario": scenario(s),
                "attack": s["attack"],
                "clean_accuracy": base["accuracy"]["mean"],
                "attacked_accuracy": s["accuracy"]["mean"],
                "cost": base["accuracy"]["mean"] - s["accuracy"]["mean"],
                "attacked_spread": s["accuracy"]["max"] - s["accuracy"]["min"],
            }
        )
    return rows


def _attack_cell(attacks: dict[str, float]) -> str:
    """The cross-task attack per pair, or "not audited" for cells run with ``audit.enabled = false``."""
    return ", ".join(f"{p} {a:.3f}" for p, a in attacks.items()) or "not audited"


def _number(value: float | None) -> str:
    return "not audited" if value is None else f"{value:.3f}"


def render_sweep(report: dict[str, Any]) -> str:
    """``sweep.md``: every setting, the attacks' cost, then the recommendation per scenario."""
    lines = [f"# Sweep: {report['cells_done']} of {report['cells_total']} cells", ""]
    lines += [f"Machine: {report['machine']}. Seeds: {report['seeds']}. Each cell is a run folder in `cells/`.", ""]
    lines += ["## Settings (final accuracy, mean over tasks; mean over seeds and their range)", ""]
    lines += [
        "| scenario | strategy | accuracy | range | epsilon | cross-task attack | SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sorted(report["settings"], key=lambda s: (scenario(s), -s["accuracy"]["mean"])):
        a = s["accuracy"]
        lines.append(
            f"| {scenario(s)} | {strategy_label(s)} | {a['mean']:.3f} | {a['min']:.3f}-{a['max']:.3f} | "
            f"{s['epsilon']:.2f} | {_attack_cell(s['cross_task_attack'])} | {_number(s['ssim'])} |"
        )
    if report["attack_costs"]:
        lines += ["", "## What each attack costs (accuracy without the attack minus with it, same setting)", ""]
        lines += ["| strategy | scenario | clean | attacked | cost |", "|---|---|---|---|---|"]
        for r in sorted(report["attack_costs"], key=lambda r: (r["scenario"], r["cost"])):
            lines.append(
                f"| {r['strategy']} | {r['scenario']} | {r['clean_accuracy']:.3f} | {r['attacked_accuracy']:.3f} | "
                f"{r['cost']:+.3f} |"
            )
    lines += ["", "## Recommendation", ""]
    lines += [
        "Best setting per scenario by final accuracy; 'separated' means the best setting's worst seed beat the "
        "runner-up's best seed, with two seeds or more each. Otherwise these seeds cannot tell the two apart.",
        "",
        "| scenario | best | accuracy (range) | runner-up | accuracy (range) | gap | separated | epsilon "
        "| cross-task attack | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["recommendation"]:
        b, ru = r["best_accuracy"], r["runner_up_accuracy"]
        runner = f"{r['runner_up_label']} | {ru['mean']:.3f} ({ru['min']:.3f}-{ru['max']:.3f})" if ru else "- | -"
        gap = f"{r['gap']:+.3f}" if r["gap"] is not None else "-"
        lines.append(
            f"| {r['scenario']} | {r['best_label']} | {b['mean']:.3f} ({b['min']:.3f}-{b['max']:.3f}) | {runner} | "
            f"{gap} | {'yes' if r['separated'] else 'no'} | {r['epsilon']:.2f} | "
            f"{_attack_cell(r['cross_task_attack'])} | {_number(r['ssim'])} |"
        )
    if report.get("failed"):
        lines += ["", "## Cells that failed", ""] + [f"- `{k}`: {why}" for k, why in report["failed"].items()]
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in report["plots"]), ""]
    return "\n".join(lines)
