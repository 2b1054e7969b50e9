"""PNG plots of a run: training curves and the reconstruction grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: devices and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, axes, path: Path, grid_axis: str = "both") -> None:
    for ax in axes:
        ax.grid(alpha=0.3, axis=grid_axis)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(rows: list[dict], task_names: list[str], path: Path) -> None:
    """Test accuracy per task and DP-SGD epsilon against epoch, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        epochs = [r["epoch"] for r in mine]
        for task in task_names:
            axes[0].plot(epochs, [r[f"test_acc.{task}"] for r in mine], marker="o", label=f"{method}: {task}")
        if all(r.get("epsilon") is not None for r in mine):
            axes[1].plot(epochs, [r["epsilon"] for r in mine], marker="o", label=method)
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="Task accuracy (released features)")
    axes[1].set(xlabel="epoch", ylabel="epsilon", title="DP-SGD epsilon spent")
    _save(fig, axes, path)


def plot_reconstruction_grid(originals: torch.Tensor, rows: dict[str, torch.Tensor], path: Path, n: int = 8) -> None:
    """First row the held-out originals, then one row per attack (e.g. "universal: left")."""
    labelled = {"original": originals[:n], **{k: v[:n] for k, v in rows.items()}}
    fig, axes = plt.subplots(len(labelled), n, figsize=(n * 1.2, len(labelled) * 0.85 + 0.3), squeeze=False)
    for r, (label, images) in enumerate(labelled.items()):
        for c in range(n):
            img = images[c]
            ax = axes[r][c]
            ax.imshow(
                img.permute(1, 2, 0).clamp(0, 1).numpy() if img.shape[0] == 3 else img[0].numpy(),
                cmap="gray",
                vmin=0,
                vmax=1,
            )
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Input reconstruction from released features (held-out images)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rounds(rows: list[dict], task_names: list[str], path: Path) -> None:
    """Federated run: held-out accuracy per task and device epsilon (max and mean) against round."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    rounds = [r["round"] for r in rows]
    for task in task_names:
        axes[0].plot(rounds, [r[f"test_acc.{task}"] for r in rows], marker="o", label=task)
    axes[1].plot(rounds, [r["epsilon_max"] for r in rows], marker="o", label="max over devices")
    axes[1].plot(rounds, [r["epsilon_mean"] for r in rows], marker="s", label="mean over devices")
    axes[0].set(xlabel="round", ylabel="held-out accuracy", title="Task accuracy (server held-out set)")
    axes[1].set(xlabel="round", ylabel="epsilon (cumulative)", title="DP-SGD epsilon spent by devices")
    _save(fig, axes, path)


def plot_attacks(methods: dict[str, dict], path: Path) -> None:
    """Cross-task attack accuracy next to chance, and reconstruction SSIM next to the label-only floor."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / max(1, len(methods))
    span = (len(methods) - 0.5) * width  # the dashed reference covers the group of bars it belongs to
    first = next(iter(methods.values()))
    panels = [  # (axis, section, plotted value, reference value, y label, title)
        (axes[0], "cross_task_attack", "accuracy", "chance", "probe accuracy", "Cross-task attack (dashed: chance)"),
        (
            axes[1],
            "reconstruction",
            "ssim",
            "ssim_label_only",
            "SSIM",
            "Input reconstruction (dashed: label-only floor)",
        ),
    ]
    for ax, section, value, reference, ylabel, title in panels:
        keys = list(first[section])
        for i, (name, m) in enumerate(methods.items()):
            ax.bar([p + i * width for p in range(len(keys))], [m[section][k][value] for k in keys], width, label=name)
        for p, k in enumerate(keys):
            ax.hlines(first[section][k][reference], p - width / 2, p + span, colors="k", linestyles="--")
        ax.set(xticks=range(len(keys)), xticklabels=keys, ylabel=ylabel, title=title)
    _save(fig, axes, path, grid_axis="y")
