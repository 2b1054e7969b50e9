"""Plots of a comparison: privacy against utility per task, and every method's reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .plots import _save, plt


def plot_privacy_utility(comparison: dict[str, Any], tasks: list[str], path: Path) -> None:
    """Per task: its accuracy against the cross-task attack on its features (left) and against the
    reconstruction SSIM from them (right). Points are seed means, bars one standard deviation."""
    methods = comparison["methods"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        pair = next(p for p in next(iter(methods.values()))["cross_task_attack"] if p.startswith(f"{task}->"))
        panels = [
            (axes[row][0], lambda m, p=pair: m["cross_task_attack"][p]["accuracy"], f"attack {pair} accuracy"),
            (axes[row][1], lambda m, t=task: m["reconstruction"][t]["ssim"], f"reconstruction SSIM from {task}"),
        ]
        for ax, stat_of, xlabel in panels:
            for name, m in methods.items():
                x, y = stat_of(m), m["tasks"][task]["accuracy"]
                ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", capsize=3, label=name)
            ax.set(xlabel=f"{xlabel} (lower: more private)", ylabel=f"{task} accuracy")
        first = next(iter(methods.values()))
        axes[row][0].axvline(first["cross_task_attack"][pair]["chance"]["mean"], color="k", ls="--", lw=0.8)
        axes[row][1].axvline(first["reconstruction"][task]["ssim_label_only"]["mean"], color="k", ls="--", lw=0.8)
        axes[row][0].set_title(f"{task}: utility vs cross-task leak (dashed: chance)")
        axes[row][1].set_title(f"{task}: utility vs input leak (dashed: label-only floor)")
    _save(fig, [ax for pair_axes in axes for ax in pair_axes], path)


def plot_image_panels(images: dict[str, Path], path: Path) -> None:
    """Existing PNGs (e.g. each method's reconstruction grid) side by side, titled."""
    fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 5), squeeze=False)
    for ax, (title, file) in zip(axes[0], images.items(), strict=True):
        ax.imshow(plt.imread(file))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SWEEP_AXES = {"dp_sgd": "DP-SGD epsilon spent (per device)", "feature_dp": "feature epsilon (per release)"}


def plot_sweep(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    """Utility and attack results against the swept value: one row of panels per swept key (its epsilons
    are on different scales), one line per method and task or attacked pair."""
    keys = list(dict.fromkeys(r["key"] for r in rows))
    fig, axes = plt.subplots(len(keys), 3, figsize=(15, 3.8 * len(keys)), squeeze=False)
    for (method, key), mine in _group(rows).items():
        row = axes[keys.index(key)]
        xs = [r["value"] for r in mine]
        for task in tasks:
            row[0].plot(xs, [r["accuracy"][task] for r in mine], marker="o", label=f"{method} {task}")
            row[2].plot(xs, [r["ssim"][task] for r in mine], marker="o", label=f"{method} {task}")
        for pair in mine[0]["attack"]:
            row[1].plot(xs, [r["attack"][pair] for r in mine], marker="o", label=f"{method} {pair}")
    for key, row in zip(keys, axes, strict=True):
        for ax in row:
            ax.set_xlabel(SWEEP_AXES.get(key.split(".")[0], key))
        row[0].set(ylabel="task accuracy", title=f"Utility ({key})")
        row[1].set(ylabel="cross-task attack accuracy", title=f"Cross-task leak ({key})")
        row[2].set(ylabel="reconstruction SSIM", title=f"Input leak ({key})")
    _save(fig, [ax for row in axes for ax in row], path)


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["key"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["value"]) for k, v in groups.items()}


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> None:
    """Every swept run as one point: mean task accuracy against its cross-task leak (left) and its input leak
    (right), both above the no-feature floor; frontier runs (``frontier.on_frontier``) are joined."""
    from .frontier import cross_task_excess, input_excess, mean_accuracy, on_frontier

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), squeeze=False)
    marks = on_frontier(rows)
    one_method = len({r["method"] for r in rows if r["key"] != "method"}) <= 1

    def name(r: dict[str, Any]) -> str:
        if r["key"] == "method":
            return str(r["set"])
        return f"{r['key'].split('.')[-1]}={r['set']}" + ("" if one_method else f" ({r['method']})")

    for ax, leak, xlabel in (
        (axes[0][0], cross_task_excess, "strongest cross-task attack above its floor"),
        (axes[0][1], input_excess, "reconstruction SSIM gain over the label alone"),
    ):
        for r, best in zip(rows, marks, strict=True):
            x, y = leak(r), mean_accuracy(r)
            ax.plot(x, y, "o", color="C3" if best else "C0")
            ax.annotate(name(r), (x, y), fontsize=7, alpha=0.8, rotation=20)
        ax.axvline(0.0, color="k", ls="--", lw=0.8, label="floor (no features)")
        ax.set(xlabel=f"{xlabel} (lower: more private)", ylabel="mean task accuracy")
    front = sorted((cross_task_excess(r), mean_accuracy(r)) for r, best in zip(rows, marks, strict=True) if best)
    axes[0][0].plot([p[0] for p in front], [p[1] for p in front], "-", color="C3", lw=1, label="frontier")
    axes[0][0].set_title("Utility vs cross-task leak (dashed: no leak)")
    axes[0][1].set_title("Utility vs input leak (dashed: no gain over the label)")
    _save(fig, [axes[0][0], axes[0][1]], path)
