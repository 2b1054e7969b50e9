"""What the release gate costs a device per release, on one thread, side by side: the gate as it is (its
cross-validated probe fit from per-fold sums), against the gate fitting one closed-form probe per fold on
the fold's training rows (as before the sums), against scikit-learn's probe pipeline per fold, and against
the gate drawing its rehearsal copies' noise from the cryptographic generator that releases use
(``Randomness.normal`` of a secret source) instead of ``Randomness.local_only``.

One device of the default run (the embedded digits, 20,000 pairs) at ``--devices`` population sizes: its own
pairs, the 2,000 public reference pairs, the untrained generator (whose features leak, so the gate tries
more than one noise step, as early in a run). Each trial runs the whole gate once per variant, in a
rotating order; the table gives the median and the range over ``--trials`` of each, and of each
variant's ratio to the gate as it is within a trial.

    python benchmarks/release_gate_cost.py [--devices 10 100] [--trials 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import spread  # noqa: E402

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.data.partition import device_datasets  # noqa: E402
from fl_metamorphosis.data.reference import reference_pairs  # noqa: E402
from fl_metamorphosis.methods import method_plan  # noqa: E402
from fl_metamorphosis.privacy import release_gate as gate  # noqa: E402
from fl_metamorphosis.privacy.randomness import Randomness, randomness_for  # noqa: E402
from fl_metamorphosis.training.local_round import build_generator  # noqa: E402


def sklearn_predict(x_train, y_train, x_test):
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0)).fit(x_train, y_train).predict(x_test)


def _span(values: list[float], unit: str = "s") -> str:
    return f"{spread(values)} {unit}"


def closed_form_predict(x_train, y_train, x_test, alpha: float = 1.0):
    """The gate's probe before its per-fold sums: scikit-learn's pipeline in closed form, one fit per fold on
    that fold's training rows (``release_gate.cross_validated_hits`` gives the same hits)."""
    x = x_train.astype(np.float64)
    n, eps = len(x), np.finfo(np.float64).eps
    mean = x.mean(0)
    x -= mean
    var = np.einsum("ij,ij->j", x, x) / n
    scale = np.sqrt(var)
    scale[var <= n * eps * var + (n * mean * eps) ** 2] = 1.0
    classes, index = np.unique(y_train, return_inverse=True)
    targets = -np.ones((n, len(classes)))
    targets[np.arange(n), index] = 1.0
    if len(classes) == 2:
        targets = targets[:, 1:]
    gram = (x.T @ x) / np.outer(scale, scale)
    gram.flat[:: gram.shape[0] + 1] += alpha
    coef = linalg.solve(gram, (x.T @ targets) / scale[:, None], assume_a="pos")
    scores = (x_test - mean) @ (coef / scale[:, None]) + targets.mean(0)
    return classes[(scores[:, 0] > 0).astype(int)] if len(classes) == 2 else classes[scores.argmax(1)]


def per_fold(predict):
    """``release_gate.cross_validated_hits`` as one fit of ``predict`` per fold on that fold's training rows."""

    def hits(train_copies, test_rows, y, fold, folds):
        correct = 0
        for k in range(folds):
            train, test = fold != k, fold == k
            x_train, y_train = np.concatenate(train_copies[:, train]), np.tile(y[train], len(train_copies))
            if len(np.unique(y_train)) < 2:
                correct += int((y[test] == y_train[0]).sum())
            else:
                correct += int((predict(x_train, y_train, test_rows[test]) == y[test]).sum())
        return correct

    return hits


VARIANTS = ["as it is", "a closed-form fit per fold", "scikit-learn probe per fold", "cryptographic rehearsal"]


def one_population(n: int, trials: int) -> tuple[int, dict[str, list[float]]]:
    """Device 0 of ``n``: its number of pairs, and the gate's seconds in each variant over ``trials``."""
    cfg = build_config(None, ["data.train_pairs=20000", 'methods=["metamorphosis"]', f"federated.num_devices={n}"])
    train, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    generator = build_generator(cfg, train)
    randomness = randomness_for("os_entropy", 0, 0, 1, 2)
    reference = reference_pairs(cfg.data, cfg.train.seed, train, randomness.generator())
    from_sums, local_only = gate.cross_validated_hits, Randomness.local_only
    probes = {VARIANTS[1]: per_fold(closed_form_predict), VARIANTS[2]: per_fold(sklearn_predict)}

    def run_gate(variant: str) -> float:
        gate.cross_validated_hits = probes.get(variant, from_sums)
        Randomness.local_only = (lambda self: self) if variant == "cryptographic rehearsal" else local_only
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
        for variant in VARIANTS:  # imports and first-call caches out of the timing
            run_gate(variant)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for trial in range(trials):
            turn = trial % len(VARIANTS)
            for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                times[variant].append(run_gate(variant))
    finally:
        gate.cross_validated_hits, Randomness.local_only = from_sums, local_only
    return len(train), times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    p.add_argument("--trials", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| devices | own pairs | variant | gate per release | ratio to the gate as it is |\n|---|---|---|---|---|")
    for n in args.devices:
        pairs, times = one_population(n, args.trials)
        for variant in VARIANTS:
            ratios = [a / b for a, b in zip(times[variant], times["as it is"], strict=True)]
            print(f"| {n} | {pairs} | {variant} | {_span(times[variant])} | {_span(ratios, 'x')} |", flush=True)
    print(f"(one thread; {args.trials} trials each, in rotating order; median (min-max))")


if __name__ == "__main__":
    main()
