"""How far above chance a leak must be for the release gate to see it, and what the gate costs a device.

For each chosen round of a finished ``simulate`` run, the weights the devices received that round
(``checkpoints/``) are put in front of one device's own pairs (device 0 of the run's partition, 2,000
pairs at the demo's defaults) and the release gate (``privacy/release_gate.py``) decides ``--trials``
times, each with fresh secret randomness, at the configured noise only (its noise steps are left out:
"withheld" here means "failed at the configured noise"). Beside each decision rate stands the leak
itself: the strongest attacker's accuracy on that round's releases, read from the run's held-rows audit
(its summary's, or ``audit RUN --held-rounds all``'s ``held_rows.json``; without it the benchmark
computes the linear and MLP attackers itself, a weaker stand-in, and says so). The table is the gate's
detection power: the share of decisions that fail a task against how far the attack on it beats chance.
The gate's seconds per decision are timed in the same process (1 torch thread, as on a board).

Run: .venv/bin/python benchmarks/release_gate_power.py runs/demo --rounds 1 2 3 5 8 10 12 15 20 30 --trials 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fl_metamorphosis.audit import AttackData, cross_task_attacks
from fl_metamorphosis.checkpoint import INITIAL_FILE, RUN_FILE, load_model
from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.data.partition import device_datasets
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.model import FeatureGenerator
from fl_metamorphosis.privacy.randomness import Randomness
from fl_metamorphosis.privacy.release_gate import release_gate
from fl_metamorphosis.training import released_features


def _weights(run: Path, rnd: int):
    file = run / "checkpoints" / (INITIAL_FILE if rnd == 0 else RUN_FILE.format(rnd))
    method, config, generator, _ = load_model(file)
    return method, ExperimentConfig.model_validate(config), generator


def _attack_from_audit(run: Path, rnd: int) -> dict[str, dict] | None:
    """The round's strongest attack from ``audit RUN --held-rounds`` or the run's own summary."""
    audit, summary = run / "audit" / "held_rows.json", run / "summary.json"
    if audit.exists():
        result = json.loads(audit.read_text())
    elif summary.exists() and json.loads(summary.read_text()).get("held_rows_audit"):
        result = json.loads(summary.read_text())["held_rows_audit"]
    else:
        return None
    for r in result["rounds"]:
        if r["round"] == rnd and not r["interpolated"]:
            return r["pairs"]
    return None


def _attack_here(generator, cfg: ExperimentConfig, method: str) -> dict[str, dict]:
    split = load_dataset(cfg.data, cfg.train.seed)
    audit = cfg.audit.model_copy(update={"attackers": ["linear", "mlp"]})
    data = AttackData.draw(split, audit, cfg.train.seed)
    fdp = method_plan(cfg, method).feature_dp
    att = released_features(generator, data.attacker.images, fdp, 1).numpy()
    ev = released_features(generator, data.evaluation.images, fdp, 2).numpy()
    return cross_task_attacks(
        att, data.attacker.labels.numpy(), ev, data.evaluation.labels.numpy(), data.attacker.task_names, audit
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a simulate run folder (with checkpoints/)")
    parser.add_argument("--rounds", type=int, nargs="+", default=[0, 1, 2, 3, 5, 8, 10, 12, 15, 20, 30])
    parser.add_argument("--trials", type=int, default=5, help="gate decisions per round, each with fresh randomness")
    parser.add_argument("--out", type=Path, help="JSON of the table (default RUN/audit/release_gate_power.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for rnd in args.rounds:
        method, cfg, state = _weights(args.run, rnd)
        data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
        classes = [t.num_classes for t in data.tasks]
        generator = FeatureGenerator(method, data.image_shape, len(classes), cfg.model, classes)
        generator.load_state_dict(state)
        attack = _attack_from_audit(args.run, rnd)
        source = "held-rows audit (strongest of the run's attacker families)"
        if attack is None:
            attack, source = _attack_here(generator, cfg, method), "linear and MLP attackers (this benchmark)"
        withheld = {t: 0 for t in data.task_names}
        seconds = []
        for _ in range(args.trials):
            t0 = time.perf_counter()
            decisions = release_gate(
                generator,
                data.images,
                data.labels,
                data.task_names,
                feature_dp=method_plan(cfg, method).feature_dp,
                cfg=cfg.release_gate.model_copy(update={"noise_steps": [1.0]}),  # power at the configured noise
                randomness=Randomness.secret(),
            )
            seconds.append(time.perf_counter() - t0)
            for d in decisions:
                withheld[d.task] += d.withheld
        for pair, a in attack.items():
            task = pair.split("->")[0]
            rows.append(
                {
                    "round": rnd,
                    "pair": pair,
                    "attack": a["accuracy"],
                    "chance": a["chance"],
                    "excess": a["accuracy"] - a["chance"],
                    "withheld_rate": withheld[task] / args.trials,
                    "gate_seconds_median": statistics.median(seconds),
                    "attack_source": source,
                }
            )
            r = rows[-1]
            print(
                f"round {rnd:>2} {pair:>12}: attack {r['attack']:.3f} (chance {r['chance']:.3f}, excess "
                f"{r['excess']:+.3f}) | withheld in {withheld[task]}/{args.trials} | gate "
                f"{min(seconds):.2f}-{max(seconds):.2f} s",
                flush=True,
            )
    out = args.out or args.run / "audit" / "release_gate_power.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    margin, confidence = cfg.release_gate.margin, cfg.release_gate.confidence
    out.write_text(
        json.dumps({"margin": margin, "confidence": confidence, "trials": args.trials, "rows": rows}, indent=2)
    )
    print("\nexcess over chance -> share of decisions that withheld the task (margin "
          f"{margin}, confidence {confidence}, {len(data)} pairs of device 0):")  # fmt: skip
    for lo, hi in ((-1, 0.02), (0.02, 0.05), (0.05, 0.08), (0.08, 0.15), (0.15, 1)):
        inside = [r for r in rows if lo <= r["excess"] < hi]
        if inside:
            rate = sum(r["withheld_rate"] for r in inside) / len(inside)
            print(f"  [{lo:+.2f}, {hi:+.2f}): {len(inside)} round-pairs, withheld {rate:.0%}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
