"""The privacy-utility frontier of a sweep: which settings no other setting beats on both axes.

Each swept run is one point: its utility (the mean task accuracy) against its leak. The leak is measured
above what needs no features at all, so that runs on data with different baselines compare: for the
cross-task attack, the strongest pair's accuracy above its floor (chance, or what one task's label alone
predicts of the other when the tasks are correlated); for the input, the largest gain in reconstruction
SSIM from features plus label over the label alone. A point is on the frontier when no other point has at
least its accuracy and at most its leak, with one of the two strictly better. The frontier is judged on
the cross-task leak (the paper's claim); the input leak is reported beside it, since a setting that hides
the other task may still reveal the input.
"""

from __future__ import annotations

from typing import Any


def cross_task_excess(row: dict[str, Any]) -> float:
    """The strongest cross-task attack's accuracy above its no-feature floor (0: nothing learned)."""
    return max(row["attack"][p] - row["attack_floor"][p] for p in row["attack"])


def input_excess(row: dict[str, Any]) -> float:
    """The largest SSIM gain a reconstruction gets from a task's features on top of its label."""
    return max(row["ssim_features_and_label"][t] - row["ssim_label_only"][t] for t in row["ssim_label_only"])


def mean_accuracy(row: dict[str, Any]) -> float:
    return sum(row["accuracy"].values()) / len(row["accuracy"])


def on_frontier(rows: list[dict[str, Any]]) -> list[bool]:
    """For each row: whether no other row is at least as accurate and leaks at most as much, one strictly."""
    points = [(mean_accuracy(r), cross_task_excess(r)) for r in rows]

    def beaten(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in points)

    return [not beaten(p) for p in points]


def render_frontier(rows: list[dict[str, Any]], title: str) -> str:
    """A markdown table of every swept run, most private first, frontier runs marked."""
    tasks = list(rows[0]["accuracy"])
    pairs = list(rows[0]["attack"])
    marks = on_frontier(rows)
    lines = [
        f"# {title}",
        "",
        "Leak above the floor: cross-task attack accuracy minus what the attacker gets with no features (chance or "
        "the label floor); input: SSIM of features + label minus the label alone. Frontier (*): no other run is "
        "as accurate with less cross-task leak.",
        "",
        "| setting | method | "
        + " | ".join(f"acc {t}" for t in tasks)
        + " | "
        + " | ".join(pairs)
        + " | cross-task leak | input leak | frontier |",
        "|---|---|" + "---|" * (len(tasks) + len(pairs) + 3),
    ]
    order = sorted(range(len(rows)), key=lambda i: (cross_task_excess(rows[i]), -mean_accuracy(rows[i])))
    for i in order:
        r = rows[i]
        cells = [f"{r['key']}={r['set']}", r["method"]]
        cells += [f"{r['accuracy'][t]:.3f}" for t in tasks]
        cells += [f"{r['attack'][p]:.3f} (floor {r['attack_floor'][p]:.3f})" for p in pairs]
        cells += [f"{cross_task_excess(r):+.3f}", f"{input_excess(r):+.3f}", "*" if marks[i] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
