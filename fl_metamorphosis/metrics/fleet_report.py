"""A fleet simulation's report: lost devices per round, simulated time to a target accuracy, both
views of privacy, and accuracy against simulated time.

The server knows the replies that reached it; a device that trained and then dropped out counted
that training in its own ledger without the server ever seeing it. Only the simulation can read both:
the server's ledger (``summary.json``) and each device's own state folder (``devices/<id>``). The
report puts them side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..config import ExperimentConfig  # noqa: E402
from ..methods import method_plan  # noqa: E402
from ..privacy.device_state import STATE_FILE, DeviceState  # noqa: E402
from .writer import read_jsonl, write_json  # noqa: E402

COUNTS = ("sampled", "answered", "fleet.dropped", "fleet.stragglers", "declined", "rejected")


def mean_accuracy(row: dict[str, Any]) -> float:
    accs = [v for k, v in row.items() if k.startswith("test_acc.")]
    return sum(accs) / len(accs)


def time_to_target(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The first round (and simulated second) at which the mean task accuracy reaches ``target``."""
    for row in rows:
        if mean_accuracy(row) >= target:
            return {"target": target, "round": row["round"], "simulated_seconds": row["fleet.elapsed_seconds"]}
    return {"target": target, "round": None, "simulated_seconds": None}


def devices_own_epsilon(devices_root: Path, cfg: ExperimentConfig) -> dict[int, dict[str, float]]:
    """Each device's epsilon and steps from its own ledger, as it sees them."""
    grouped = method_plan(cfg).grouped
    own = {}
    for folder in sorted(Path(devices_root).iterdir()) if Path(devices_root).is_dir() else []:
        if (folder / STATE_FILE).exists() and folder.name.isdigit():
            history = DeviceState.load(folder).history
            eps = history.epsilon(cfg.dp_sgd.delta, cfg.dp_sgd.accountant, grouped=grouped) if history.steps else 0.0
            own[int(folder.name)] = {"epsilon": eps, "steps": history.steps}
    return own


def fleet_summary(out: Path, cfg: ExperimentConfig, server_privacy: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = read_jsonl(Path(out) / "metrics.jsonl")
    fleet = cfg.federated.fleet
    target = fleet.target_accuracy if fleet.target_accuracy is not None else 0.95 * max(map(mean_accuracy, rows))
    own = devices_own_epsilon(Path(out) / "devices", cfg)
    views = {
        str(d): {
            "device_epsilon": v["epsilon"],
            "device_steps": v["steps"],
            "server_epsilon": server_privacy.get(str(d), {}).get("epsilon", 0.0),
            "server_steps": server_privacy.get(str(d), {}).get("steps", 0),
        }
        for d, v in own.items()
    }
    return {
        "classes": [c.model_dump() for c in fleet.classes],
        "deadline_s": fleet.deadline_s,
        "target_replies": fleet.target_replies,
        "per_round": [{"round": r["round"], **{k: r[k] for k in COUNTS}, **_fleet_keys(r)} for r in rows],
        "totals": {k: sum(r[k] for r in rows) for k in COUNTS},
        "simulated_seconds": rows[-1]["fleet.elapsed_seconds"] if rows else 0.0,
        "time_to_target": time_to_target(rows, target),
        "privacy_views": views,
        "devices_ahead_of_server": sorted(int(d) for d, v in views.items() if v["device_steps"] > v["server_steps"]),
    }


def _fleet_keys(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k.startswith("fleet.")}


def plot_accuracy_against_time(rows: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    tasks = [k.removeprefix("test_acc.") for k in rows[0] if k.startswith("test_acc.")]
    t = [r["fleet.elapsed_seconds"] for r in rows]
    for task in tasks:
        axes[0].plot(t, [r[f"test_acc.{task}"] for r in rows], marker="o", label=task)
    rounds = [r["round"] for r in rows]
    axes[1].bar(rounds, [r["answered"] for r in rows], label="answered")
    bottom = [r["answered"] for r in rows]
    for key, label in (("fleet.dropped", "dropped"), ("fleet.stragglers", "late")):
        axes[1].bar(rounds, [r[key] for r in rows], bottom=bottom, label=label)
        bottom = [b + r[key] for b, r in zip(bottom, rows, strict=True)]
    axes[0].set(xlabel="simulated seconds", ylabel="held-out accuracy", title="Accuracy against simulated time")
    axes[1].set(xlabel="round", ylabel="sampled devices", title="What became of the sampled devices")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_fleet_section(summary: dict[str, Any]) -> str:
    lines = [
        "## Fleet",
        "",
        f"Deadline {summary['deadline_s']:g} simulated s; target replies {summary['target_replies'] or 'all'}. "
        f"Simulated time of the run: {summary['simulated_seconds']:.1f} s.",
        "",
        "| round | sampled | answered | dropped | late | available | simulated s | MB down | MB up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["per_round"]:
        lines.append(
            f"| {r['round']} | {r['sampled']} | {r['answered']} | {r['fleet.dropped']} | {r['fleet.stragglers']} | "
            f"{r['fleet.available']} | {r['fleet.round_seconds']:.1f} | {r['fleet.bytes_down'] / 1e6:.2f} | "
            f"{r['fleet.bytes_up'] / 1e6:.2f} |"
        )
    tt = summary["time_to_target"]
    reached = (
        f"round {tt['round']}, {tt['simulated_seconds']:.1f} simulated s" if tt["round"] is not None else "not reached"
    )
    ahead = summary["devices_ahead_of_server"]
    lines += [
        "",
        f"Mean accuracy {tt['target']:.3f} (the target): {reached}.",
        "",
        f"Privacy, both views: {len(ahead)} device(s) counted training the server never saw (their reply was "
        f"lost): {ahead or 'none'}. Worst device epsilon, its own ledger: "
        f"{max((v['device_epsilon'] for v in summary['privacy_views'].values()), default=0.0):.3f}; "
        f"the server's: {max((v['server_epsilon'] for v in summary['privacy_views'].values()), default=0.0):.3f}.",
        "",
        "![accuracy against simulated time](fleet.png)",
        "",
    ]
    return "\n".join(lines)


def write_fleet_report(out: Path, cfg: ExperimentConfig, run_summary: dict[str, Any]) -> dict:
    """``fleet.json``, ``fleet.png`` and a Fleet section at the end of ``report.md`` (when there is one).
    ``run_summary``: the run's ``summary.json``, whose device privacy is the server's view."""
    out = Path(out)
    server_privacy = run_summary.get("federated", {}).get("device_privacy") or run_summary.get("device_privacy", {})
    summary = fleet_summary(out, cfg, server_privacy)
    write_json(out / "fleet.json", summary)
    rows = read_jsonl(out / "metrics.jsonl")
    if rows:
        plot_accuracy_against_time(rows, out / "fleet.png")
    section = render_fleet_section(summary)
    report = out / "report.md"
    if report.exists():
        report.write_text(report.read_text().rstrip() + "\n\n" + section)
    else:
        (out / "fleet.md").write_text(section)
    return summary
