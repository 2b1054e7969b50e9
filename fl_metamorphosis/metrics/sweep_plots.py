"""Plots of a sweep, one panel per scenario (partitioning, budget, attack): accuracy per round per
strategy setting, final accuracy with the cross-task attack beside it, and accuracy against simulated
time when the cells ran on a simulated fleet. Lines and bars are means over seeds; bars span the seeds."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .plots import _save, plt
from .sweep_report import scenario, strategy_label


def _by_scenario(settings: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in settings:
        groups.setdefault(scenario(s), []).append(s)
    return groups


def _panels(count: int, width: float, height: float):
    cols = min(count, 2)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_sweep_rounds(settings: list[dict[str, Any]], path: Path, simulated_time: bool = False) -> None:
    """Accuracy per round (or against simulated seconds) of every setting, one panel per scenario."""
    groups = _by_scenario(settings)
    fig, axes = _panels(len(groups), 7.0, 4.2)
    for ax, (name, group) in zip(axes, groups.items(), strict=True):
        for i, s in enumerate(group):
            x = s["simulated_seconds"] if simulated_time else range(1, len(s["curve"]) + 1)
            style = ("-", "--", ":")[i // 10 % 3]  # the colour cycle has 10 colours
            ax.plot(x, s["curve"], marker=".", lw=1.2, ls=style, label=strategy_label(s))
        ax.set(title=name, xlabel="simulated seconds" if simulated_time else "round", ylabel="test accuracy")
    _save(fig, axes, path)


def plot_sweep_final(settings: list[dict[str, Any]], path: Path) -> None:
    """Per scenario: final accuracy of each setting (bar: mean over seeds, line: their range), and the
    cross-task attack's accuracy on its features (mean over task pairs; dashed: chance)."""
    groups = _by_scenario(settings)
    fig, axes = plt.subplots(
        len(groups),
        2,
        figsize=(12, 0.45 * max(len(g) for g in groups.values()) * len(groups) + 1.8 * len(groups)),
        squeeze=False,
    )
    for (ax_acc, ax_attack), (name, group) in zip(axes, groups.items(), strict=True):
        group = sorted(group, key=lambda s: s["accuracy"]["mean"])
        labels, y = [strategy_label(s) for s in group], range(len(group))
        means = [s["accuracy"]["mean"] for s in group]
        spans = [[m - s["accuracy"]["min"] for m, s in zip(means, group, strict=True)],
                 [s["accuracy"]["max"] - m for m, s in zip(means, group, strict=True)]]  # fmt: skip
        ax_acc.barh(y, means, xerr=spans, capsize=3, color="tab:blue", label="final accuracy")
        # a setting run without the audit has no attack figure: no bar (its row says "not audited")
        attack = [statistics.fmean(s["cross_task_attack"].values()) if s["cross_task_attack"] else 0.0 for s in group]
        ax_attack.barh(y, attack, color="tab:red", label="cross-task attack accuracy")
        audited = [s for s in group if s["cross_task_chance"]]
        if audited:
            ax_attack.axvline(statistics.fmean(audited[0]["cross_task_chance"].values()), color="k", ls="--", lw=0.8,
                              label="chance")  # fmt: skip
        for ax in (ax_acc, ax_attack):
            ax.set_yticks(list(y), labels, fontsize=7)
        ax_acc.set(title=f"{name}: utility (higher is better)", xlabel="accuracy, mean over tasks")
        ax_attack.set(title=f"{name}: cross-task leak (lower is better)", xlabel="attack accuracy")
    _save(fig, [ax for pair in axes for ax in pair], path, grid_axis="x")
