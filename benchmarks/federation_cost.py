"""Cost of federation: wall time of a Flower simulation over the wall time of a centralized run.

Both train MetaMorphosis with the same model, the same DP-SGD (target epsilon, clipping), the same
total number of training pairs and the same number of passes over them (rounds x local epochs =
central epochs), with the audit switched off, measured side by side in one process on this machine.

    python benchmarks/federation_cost.py [--devices 10 100] [--rounds 3] [--pairs 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fl_metamorphosis.config import build_config
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.training import train_method
from simulations.simulate import simulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pairs", type=int, default=20_000)
    args = p.parse_args()
    common = [f"data.train_pairs={args.pairs}", "audit.enabled=false", 'methods=["metamorphosis"]']

    cfg = build_config(None, [*common, f"train.epochs={args.rounds}"])
    torch.set_num_threads(2)
    split = load_dataset(cfg.data, cfg.train.seed)
    t0 = time.perf_counter()
    central = train_method("metamorphosis", split, cfg)
    central_s = time.perf_counter() - t0
    print(
        f"central: {args.pairs} pairs x {args.rounds} epochs: {central_s:.1f} s "
        f"(accuracy {central.history[-1]['test_acc.left']:.3f} / {central.history[-1]['test_acc.right']:.3f})"
    )

    rows = []
    for n in args.devices:
        fed = build_config(
            None,
            [
                *common,
                f"federated.num_devices={n}",
                f"federated.rounds={args.rounds}",
                "federated.local_epochs=1",
                f"federated.min_train_devices={min(2, n)}",
            ],
        )
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            simulate(fed, Path(tmp) / "run", echo=lambda _line: None)
            sim_s = time.perf_counter() - t0
        rows.append((n, sim_s, sim_s / central_s))
        print(
            f"simulate: {n} devices x {args.pairs // n} pairs, {args.rounds} rounds: {sim_s:.1f} s "
            f"= {sim_s / central_s:.2f} x central",
            flush=True,
        )

    print("\n| devices | simulation s | central s | ratio |\n|---|---|---|---|")
    for n, sim_s, ratio in rows:
        print(f"| {n} | {sim_s:.1f} | {central_s:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
