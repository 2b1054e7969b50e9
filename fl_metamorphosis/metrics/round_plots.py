"""PNG of the held-rows audit (``audit/round_audit.py``): the cross-task attack on each round's releases."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: devices and CI have no display
import matplotlib.pyplot as plt  # noqa: E402


def plot_round_attacks(result: dict, path: Path, *, margin: float) -> None:
    """Per ordered pair: attack accuracy against round (markers audited, dashed where interpolated), chance
    (dotted) with the chance + ``margin`` band, and the held-rows headline (solid horizontal); below, the rows
    held per round and task."""
    rounds = result["rounds"]
    x = [r["round"] for r in rounds]
    fig, (ax, rows_ax) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}, constrained_layout=True
    )
    for i, (pair, headline) in enumerate(result["held_rows"].items()):
        color = f"C{i}"
        acc = [r["pairs"][pair]["accuracy"] for r in rounds]
        chance = [r["pairs"][pair]["chance"] for r in rounds]
        # a segment is solid between two audited rounds and dashed wherever an interpolated round is on it
        for k in range(len(rounds) - 1):
            measured = not (rounds[k]["interpolated"] or rounds[k + 1]["interpolated"])
            ax.plot(x[k : k + 2], acc[k : k + 2], color=color, linestyle="-" if measured else "--", linewidth=1.2)
        audited = [(r["round"], a) for r, a in zip(rounds, acc, strict=True) if not r["interpolated"]]
        ax.plot(*zip(*audited, strict=True), color=color, marker="o", linestyle="none", label=f"{pair} (audited)")
        ax.plot(x, chance, color=color, linestyle=":", label=f"{pair} chance")
        ax.fill_between(x, chance, [c + margin for c in chance], color=color, alpha=0.1)
        ax.axhline(headline["accuracy"], color=color, linewidth=2, alpha=0.5, label=f"{pair} held rows (weighted)")
    w = result["worst_round"]
    ax.annotate(
        f"worst: round {w['round']}",
        (w["round"], w["accuracy"]),
        textcoords="offset points",
        xytext=(8, 6),
        fontsize=8,
    )
    ax.set(ylabel="attack accuracy", ylim=(0, 1.02))
    ax.set_title(
        "Cross-task attack on each round's releases, under that round's weights\n"
        f"(dashed: interpolated, dotted: chance, shaded: chance + {margin})",
        fontsize=9,
    )
    tasks = list(rounds[0]["rows"]) if rounds else []
    width = 0.8 / max(1, len(tasks))
    for t, task in enumerate(tasks):
        offset = (t - (len(tasks) - 1) / 2) * width
        rows_ax.bar([r + offset for r in x], [r["rows"].get(task, 0) for r in rounds], width, label=task)
    rows_ax.set(xlabel="round", ylabel="rows held")
    for a in (ax, rows_ax):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
