"""What secret noise costs a device: OS-CSPRNG Gaussians against torch's seeded generator, side by side.

Measures, in one process and one torch thread (a device's setting):
1. drawing the noise of one DP-SGD step (one normal per model parameter) and of one features release;
2. one whole DP-SGD step of the device (forward, per-sample gradients, clipping, noise) with Opacus'
   DPOptimizer on a seeded torch generator against ``SecretNoiseDPOptimizer`` on the OS CSPRNG.

Prints the times and their ratios. Run: .venv/bin/python benchmarks/device_randomness.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timing import median_seconds
from torch.utils.data import DataLoader

from fl_metamorphosis.config import build_config
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.model import build_heads
from fl_metamorphosis.privacy import make_private
from fl_metamorphosis.privacy.randomness import Randomness
from fl_metamorphosis.training.epoch import SampleSteps, run_epoch
from fl_metamorphosis.training.local_round import build_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = build_config(None, ['methods=["metamorphosis"]', "data.train_pairs=2000"])
    data = load_dataset(cfg.data, 0).train
    generator = build_generator(cfg, data)
    params = sum(p.numel() for p in generator.parameters())
    release_shape = (cfg.federated.feature_samples_per_device, len(data.tasks), cfg.model.feature_dim)
    seeded, secret = Randomness.seeded(0), Randomness.secret()

    rows = []
    draws = ((f"noise of one DP-SGD step ({params} parameters)", (params,)), ("one features release", release_shape))
    for label, shape in draws:
        a = median_seconds(lambda s=shape: seeded.normal(s, 1.0), args.repeats, warm_up=True)
        b = median_seconds(lambda s=shape: secret.normal(s, 1.0), args.repeats, warm_up=True)
        rows.append((label, a, b))

    def epoch(randomness: Randomness) -> float:
        gen = build_generator(cfg, data)
        heads = build_heads(gen.feature_shape, [t.num_classes for t in data.tasks], cfg.model).requires_grad_(False)
        opt = torch.optim.Adam(gen.parameters(), lr=0.01)
        loader = DataLoader(data, batch_size=cfg.train.batch_size, drop_last=True)
        private = make_private(gen, opt, loader, cfg.dp_sgd, 1, 1.0, randomness=randomness)
        t0 = time.perf_counter()
        plan = method_plan(cfg, "metamorphosis")
        steps = SampleSteps(
            private.module, heads, private.loader, plan.objective, plan.feature_dp, private.optimizer, randomness,
            private=private,
        )
        run_epoch(steps)
        return time.perf_counter() - t0

    steps = len(data) // cfg.train.batch_size
    pairs = [(epoch(seeded), epoch(secret)) for _ in range(max(3, args.repeats // 5))]
    a, b = statistics.median(p[0] for p in pairs) / steps, statistics.median(p[1] for p in pairs) / steps
    rows.append(("one DP-SGD step of the device (batch 256, all of it)", a, b))

    print(f"{'what':58s} {'seeded torch':>13s} {'OS CSPRNG':>11s} {'ratio':>7s}")
    for label, a, b in rows:
        print(f"{label:58s} {a * 1e3:10.2f} ms {b * 1e3:8.2f} ms {b / a:6.2f}x")


if __name__ == "__main__":
    main()
