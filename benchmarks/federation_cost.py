"""Cost of federation: a Flower simulation's start-up, its per-round cost against a centralized epoch,
and the wall time per device per round that is not training.

Both sides train MetaMorphosis with the same model, the same DP-SGD (target epsilon, clipping), the same
training pairs and the same passes over them (one round of one local epoch = one central epoch), with
the audit switched off, measured in one process on this machine, one after the other:

* central: ``train_method`` for ``max(--rounds)`` epochs; an epoch's seconds are the median difference
  of the cumulative ``seconds`` of its history (the data load excluded);
* each simulation runs twice, for the two ``--rounds`` lengths; its per-round cost is the difference of
  the two wall times over the difference of the rounds, and its start-up (launch, Ray, imports, round 0,
  the final evaluation and shutdown) is what remains of the shorter run;
* non-training milliseconds per device per round: (per-round cost - central epoch) / devices. The
  central epoch is the same training work, so the rest is federation: messages, data composition on
  the device, state files, feature release and head training, Ray scheduling.

    python benchmarks/federation_cost.py [--devices 10 100] [--rounds 3 10] [--pairs 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.data import load_dataset  # noqa: E402
from fl_metamorphosis.training import train_method  # noqa: E402
from simulations.simulate import simulate  # noqa: E402


def central_epoch_seconds(common: list[str], epochs: int) -> tuple[float, float]:
    cfg = build_config(None, [*common, f"train.epochs={epochs}"])
    torch.set_num_threads(2)
    trained = train_method("metamorphosis", load_dataset(cfg.data, cfg.train.seed), cfg)
    seconds = [r["seconds"] for r in trained.history]
    epoch = statistics.median(b - a for a, b in zip(seconds, seconds[1:], strict=False))
    return epoch, trained.history[-1]["test_acc.left"]


def simulation_seconds(common: list[str], devices: int, rounds: int) -> float:
    cfg = build_config(
        None,
        [
            *common,
            f"federated.num_devices={devices}",
            f"federated.rounds={rounds}",
            "federated.local_epochs=1",
            f"federated.min_train_devices={min(2, devices)}",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate(cfg, Path(tmp) / "run", echo=lambda _line: None)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    p.add_argument("--rounds", type=int, nargs=2, default=[3, 10])
    p.add_argument("--pairs", type=int, default=20_000)
    args = p.parse_args()
    short, long = sorted(args.rounds)
    common = [f"data.train_pairs={args.pairs}", "audit.enabled=false", 'methods=["metamorphosis"]']

    epoch_s, acc = central_epoch_seconds(common, long)
    print(f"central: {args.pairs} pairs, {long} epochs: {epoch_s:.2f} s an epoch (accuracy left {acc:.3f})", flush=True)
    rows = []
    for n in args.devices:
        a, b = simulation_seconds(common, n, short), simulation_seconds(common, n, long)
        per_round = (b - a) / (long - short)
        startup = a - short * per_round
        overhead_ms = (per_round - epoch_s) / n * 1e3
        rows.append((n, a, b, startup, per_round, per_round / epoch_s, overhead_ms))
        print(f"simulate {n} devices: {short} rounds {a:.1f} s, {long} rounds {b:.1f} s", flush=True)

    print(
        f"\n| devices | {short} rounds s | {long} rounds s | start-up s | s / round | round / central epoch "
        "| non-training ms / device / round |\n|---|---|---|---|---|---|---|"
    )
    for n, a, b, startup, per_round, ratio, overhead in rows:
        print(f"| {n} | {a:.1f} | {b:.1f} | {startup:.1f} | {per_round:.2f} | {ratio:.2f}x | {overhead:.0f} |")
    print(
        f"(central epoch: {epoch_s:.2f} s; targets: start-up <= 15 s, <= 1.2x at 10 devices, <= 1.5x at 100, <= 20 ms)"
    )


if __name__ == "__main__":
    main()
