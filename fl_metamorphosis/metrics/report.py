"""The short human-readable report of a run, built from its summary.json."""

from __future__ import annotations

from typing import Any


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render_report(summary: dict[str, Any]) -> str:
    methods: dict[str, Any] = summary["methods"]
    tasks = summary["tasks"]
    lines = [
        f"# {summary['command']} run: {summary['config']['name']}",
        "",
        f"Data: {summary['data']['name']} ({summary['data']['train']} train / {summary['data']['test']} test images), "
        f"tasks {', '.join(tasks)}. Machine: {summary['machine']}. Seed {summary['config']['train']['seed']}.",
        "",
        "## Utility and privacy",
        "",
        "| method | " + " | ".join(f"acc {t}" for t in tasks) + " | cross-task attack (chance) | "
        "recon. SSIM (label-only floor) | DP-SGD eps | feature eps | seconds |",
        "|---|" + "---|" * (len(tasks) + 5),
    ]
    for name, m in methods.items():
        accs = " | ".join(_f(m["tasks"][t]["accuracy"]) for t in tasks)
        attacks = ", ".join(
            f"{k}: {_f(v['accuracy'])} ({_f(v['chance'], 2)})" for k, v in m["cross_task_attack"].items()
        )
        recon = ", ".join(f"{t}: {_f(r['ssim'])} ({_f(r['ssim_label_only'])})" for t, r in m["reconstruction"].items())
        lines.append(
            f"| {name} | {accs} | {attacks} | {recon} | {_f(m['dp_sgd']['epsilon'], 2)} | "
            f"{_f(m['feature_dp']['epsilon'], 1)} | {_f(m['wall_seconds'], 0)} |"
        )
    lines += ["", "## Distance correlation (bias-corrected dCor², held-out released features)", ""]
    for name, m in methods.items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {_f(v)}" for k, v in m["distance_correlation"].items()))
    if any("membership" in m for m in methods.values()):
        lines += ["", "## Linear cross-task probes and membership inference", ""]
        for name, m in methods.items():
            if "membership" not in m:
                continue
            linear = ", ".join(f"{k} {_f(v['accuracy'])}" for k, v in m.get("cross_task_attack_linear", {}).items())
            lines.append(
                f"- {name}: linear probe {linear}; membership AUC {_f(m['membership']['auc'])} (chance 0.5, "
                f"{m['membership']['members']} members vs {m['membership']['non_members']} held-out)"
            )
    checks = summary.get("checks")
    if checks:
        lines += ["", "## Checks against the MetaMorphosis claim", ""]
        lines += [f"- [{'x' if c['passed'] else ' '}] {c['check']}: {c['detail']}" for c in checks]
    any_method = next(iter(methods.values()))
    lines += [
        "",
        "## How these figures were measured",
        "",
        f"- Attacker: {any_method['attacker']['knows']}; {any_method['attacker']['train_samples']} training "
        f"samples, scored on {any_method['attacker']['eval_samples']} held-out images.",
        f"- Cross-task probe: {any_method['attacker']['probe']}. Reconstruction: {any_method['attacker']['decoder']}.",
        "- DP-SGD epsilon: Opacus accountant over the steps actually taken (delta "
        f"{_f(any_method['dp_sgd'].get('delta'), 6) if any_method['dp_sgd'].get('delta') else 'n/a'}).",
        "- Feature epsilon: one release of one task feature of one image, sensitivity 2 x clip norm "
        "(local DP for that image); `epsilon_all_tasks` in summary.json composes all tasks' releases. "
        "It is a worst-case bound and large: the attack figures are the measured privacy.",
        "",
        "Plots: "
        + ", ".join(f"`{p}`" for p in summary.get("plots", ["training_curves.png", "reconstruction_grid.png"]))
        + ".",
    ]
    return "\n".join(lines) + "\n"
