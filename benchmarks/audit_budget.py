"""What capping the attacker's steps costs the attacks, and what it saves.

Loads a saved model (a ``simulate`` run folder or checkpoint), draws the attacker's released training
features (default: as many as the server received over the whole training) and trains the reconstruction
decoder and the MLP cross-task probe of the first task pair with each step cap, side by side in one
process. Prints, per cap: SSIM / attack accuracy and wall time relative to the uncapped attacker.

    python benchmarks/audit_budget.py RUN [--attacker-samples N] [--caps 4000 2000 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fl_metamorphosis.audit import AttackData
from fl_metamorphosis.audit.cross_task_probe import probe_accuracy
from fl_metamorphosis.audit.reconstruction_attack import reconstruction_attack
from fl_metamorphosis.audit.saved_run import load_saved, server_seen_releases
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.training import released_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--attacker-samples", type=int, default=None)
    p.add_argument("--caps", type=int, nargs="+", default=[4000, 2000, 1000])
    args = p.parse_args()
    torch.set_num_threads(2)
    model = load_saved(args.run)[0]
    cfg, seed = model.cfg, model.cfg.train.seed
    n_att = args.attacker_samples or max(cfg.audit.attacker_samples, server_seen_releases(cfg))
    data = AttackData.draw(load_dataset(cfg.data, seed), cfg.audit, seed, n_att)
    feature_dp = method_plan(cfg, model.method).feature_dp
    att = released_features(model.generator, data.attacker.images, feature_dp, seed + 101)
    ev = released_features(model.generator, data.evaluation.images, feature_dp, seed + 202)
    labels_att, labels_ev = data.attacker.labels.numpy(), data.evaluation.labels.numpy()
    print(f"{model.method} from {args.run}: attacker {len(data.attacker)} rows, scored on {len(data.evaluation)}")

    def decoder(cap: int | None) -> float:
        scores, _ = reconstruction_attack(
            att[:, 0],
            data.attacker.images,
            ev[:, 0],
            data.evaluation.images,
            cfg.audit.decoder_epochs,
            cfg.audit.ssim_kernel,
            seed,
            cap,
        )
        return scores["ssim"]

    def probe(cap: int | None) -> float:
        return probe_accuracy(
            att[:, 0].numpy(),
            labels_att[:, 1],
            ev[:, 0].numpy(),
            labels_ev[:, 1],
            "mlp",
            cfg.audit.model_copy(update={"max_steps": cap}),  # None: uncapped
            seed,
        )

    for name, attack, unit in (("decoder", decoder, "SSIM"), ("MLP probe 0->1", probe, "accuracy")):
        base_s = base = None
        for cap in [None, *args.caps]:
            t0 = time.perf_counter()
            score = attack(cap)
            seconds = time.perf_counter() - t0
            if cap is None:
                base, base_s = score, seconds
            print(
                f"  {name:15s} cap {str(cap or 'none'):>5s}: {unit} {score:.3f} ({score - base:+.3f}), "
                f"{seconds:6.1f} s = {seconds / base_s:.2f} x uncapped",
                flush=True,
            )


if __name__ == "__main__":
    main()
