"""What the release gate costs a device per release: scikit-learn's probe pipeline against the gate's closed
form of it, on one thread, side by side.

One device of the default run (the embedded digits, 20,000 pairs) at ``--devices`` population sizes: its own
pairs, the 2,000 public reference pairs, the untrained generator (whose features leak, so the gate tries
more than one noise step, as early in a run). Each trial runs the whole gate twice, once with each probe,
in alternating order; the table gives the median and the range over ``--trials`` of each, and of the
ratio within a trial.

    python benchmarks/release_gate_cost.py [--devices 10 100] [--trials 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.data.partition import device_datasets  # noqa: E402
from fl_metamorphosis.data.reference import reference_pairs  # noqa: E402
from fl_metamorphosis.methods import method_plan  # noqa: E402
from fl_metamorphosis.privacy import release_gate as gate  # noqa: E402
from fl_metamorphosis.privacy.randomness import randomness_for  # noqa: E402
from fl_metamorphosis.training.local_round import build_generator  # noqa: E402


def sklearn_predict(x_train, y_train, x_test):
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0)).fit(x_train, y_train).predict(x_test)


def _span(values: list[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) {unit}"


def one_population(n: int, trials: int) -> tuple[int, dict[str, list[float]]]:
    """Device 0 of ``n``: its number of pairs, and the gate's seconds with each probe over ``trials``."""
    cfg = build_config(None, ["data.train_pairs=20000", 'methods=["metamorphosis"]', f"federated.num_devices={n}"])
    train, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    generator = build_generator(cfg, train)
    randomness = randomness_for("os_entropy", 0, 0, 1, 2)
    reference = reference_pairs(cfg.data, cfg.train.seed, train, randomness.generator())
    closed_form = gate.ridge_probe_predict

    def run_gate(name: str) -> float:
        gate.ridge_probe_predict = sklearn_predict if name == "sklearn" else closed_form
        start = time.perf_counter()
        gate.release_gate(
            generator,
            train.images,
            train.labels,
            train.task_names,
            feature_dp=method_plan(cfg).feature_dp,
            cfg=cfg.release_gate,
            randomness=randomness,
            reference=(reference.images, reference.labels),
        )
        return time.perf_counter() - start

    try:
        run_gate("sklearn"), run_gate("closed")  # imports and first-call caches out of the timing
        times: dict[str, list[float]] = {"sklearn": [], "closed": []}
        for trial in range(trials):
            for name in ["sklearn", "closed"] if trial % 2 == 0 else ["closed", "sklearn"]:
                times[name].append(run_gate(name))
    finally:
        gate.ridge_probe_predict = closed_form
    return len(train), times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    p.add_argument("--trials", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| devices | own pairs | gate, scikit-learn probe | gate, closed-form probe | ratio |\n|---|---|---|---|---|")
    for n in args.devices:
        pairs, times = one_population(n, args.trials)
        ratios = [a / b for a, b in zip(times["sklearn"], times["closed"], strict=True)]
        print(
            f"| {n} | {pairs} | {_span(times['sklearn'])} | {_span(times['closed'])} | {_span(ratios, 'x')} |",
            flush=True,
        )
    print(f"(one thread; {args.trials} trials each, alternating; median (min-max))")


if __name__ == "__main__":
    main()
