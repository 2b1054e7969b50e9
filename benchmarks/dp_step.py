"""What DP-SGD costs a device's training step, by the way per-sample gradients are computed.

One process, one device of the demo (its encoder + Cross-SEC, heads frozen, the MetaMorphosis
objective with its released-feature clip and noise), one batch, side by side and interleaved:

* ``no DP``: the plain step (mean loss, backward, Adam);
* ``opacus hooks``: today's path: Opacus' GradSampleModule (per-sample gradients by module hooks),
  its DPOptimizer (per-sample clip, sum, Gaussian noise), Adam;
* ``torch.func``: per-sample gradients with ``vmap(grad(...))`` over a functional call of the same
  module, then the same clip, sum and noise by hand, Adam;
* ``ghost (default)``: the device's default since this benchmark: ``make_private`` with
  ``grad_sample_mode="ghost"`` (``privacy/ghost_clipping.py``): per-sample gradient norms from layer
  inputs and output gradients, a second backward pass of the clip-weighted loss, Opacus' optimizer;
* ``opacus ghost``: Opacus' own fast gradient clipping (``GradSampleModuleFastGradientClipping``,
  ``DPOptimizerFastGradientClipping``, ``DPTensorFastGradientClipping`` fed the per-sample losses).

Correctness: each private variant's clipped, summed gradient (before noise) is compared with a
reference computed one sample at a time (a backward pass per sample, clipped, summed). The feature
noise inside the loss is drawn once per batch and passed in, so every variant sees the same loss.

Opacus' ``make_private(grad_sample_mode="ghost")`` wants the loss as ``criterion(output, target)``,
which this objective is not; its ``DPTensorFastGradientClipping`` takes per-sample losses directly,
which is how the ``opacus ghost`` row drives it.

Run: .venv/bin/python benchmarks/dp_step.py [--steps 20] [--batch 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opacus import GradSampleModule  # noqa: E402
from opacus.grad_sample import GradSampleModuleFastGradientClipping  # noqa: E402
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping  # noqa: E402
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.data.partition import device_datasets  # noqa: E402
from fl_metamorphosis.methods import method_plan  # noqa: E402
from fl_metamorphosis.model import build_heads  # noqa: E402
from fl_metamorphosis.privacy import make_private  # noqa: E402
from fl_metamorphosis.privacy.feature_noise import clip_features  # noqa: E402
from fl_metamorphosis.privacy.randomness import Randomness  # noqa: E402
from fl_metamorphosis.training.local_round import build_generator  # noqa: E402


def setup(batch: int):
    cfg = build_config(None, ['methods=["metamorphosis"]'])
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    torch.manual_seed(0)
    generator = build_generator(cfg, data)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
    heads.requires_grad_(False)
    x, y = data.images[:batch], data.labels[:batch]
    return cfg, generator, heads, x, y, data


def loss_fn(cfg, generator, heads, objective, feature_dp):
    """Per-sample loss of a batch, with the release noise passed in (the same for every variant)."""

    def per_sample(module, x, y, noise):
        feats, attention = module(x)
        released = clip_features(feats, feature_dp.clip_norm) + noise
        loss, _ = objective.per_sample(heads, released, attention, y, feats, x, None)
        return loss

    return per_sample


def clipped_sum(grads: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    """Per-sample gradients ``[B, ...]`` -> clip each sample's whole gradient to ``clip`` -> sum."""
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("b,b...->...", factor, g) for k, g in grads.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, generator, heads, x, y, data = setup(args.batch)
    objective = method_plan(cfg, "metamorphosis").objective
    feature_dp = method_plan(cfg, "metamorphosis").feature_dp
    per_sample = loss_fn(cfg, generator, heads, objective, feature_dp)
    clip, sigma = cfg.dp_sgd.max_grad_norm, 1.0
    noise_gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        feats, _ = generator(x)
    release_noise = torch.randn(feats.shape, generator=noise_gen) * feature_dp.noise_std
    names = [n for n, p in generator.named_parameters() if p.requires_grad]

    # the reference: one backward per sample
    reference_grads = {n: [] for n in names}
    for i in range(len(x)):
        generator.zero_grad(set_to_none=True)
        per_sample(generator, x[i : i + 1], y[i : i + 1], release_noise[i : i + 1]).sum().backward()
        for n, p in generator.named_parameters():
            if p.requires_grad:
                reference_grads[n].append(p.grad.detach().clone())
    reference = clipped_sum({n: torch.stack(g) for n, g in reference_grads.items()}, clip)

    # no DP
    plain_opt = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=1e-9)

    def step_plain():
        plain_opt.zero_grad(set_to_none=True)
        per_sample(generator, x, y, release_noise).mean().backward()
        plain_opt.step()

    # Opacus hooks (as fl_metamorphosis/privacy/dp_sgd.py wraps it)
    hooked = GradSampleModule(copy.deepcopy(generator))  # its own copy: the hooks stay off the others
    hooked_opt = DPOptimizer(
        torch.optim.Adam([p for p in hooked.parameters() if p.requires_grad], lr=1e-9),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=args.batch,
    )

    def opacus_clipped_sum() -> dict[str, torch.Tensor]:
        hooked_opt.zero_grad(set_to_none=True)
        per_sample(hooked, x, y, release_noise).mean().backward()
        hooked_opt.clip_and_accumulate()
        return {n: p.summed_grad.detach().clone() for n, p in zip(names, hooked_opt.params, strict=True)}

    def step_opacus():
        hooked_opt.zero_grad(set_to_none=True)
        per_sample(hooked, x, y, release_noise).mean().backward()
        hooked_opt.step()

    # torch.func
    params = {n: p for n, p in generator.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in generator.named_parameters() if not p.requires_grad}
    buffers = dict(generator.named_buffers())
    func_opt = torch.optim.Adam(list(params.values()), lr=1e-9)

    def one(p, xi, yi, ni):
        def module(inp):
            return functional_call(generator, ({**p, **frozen}, buffers), (inp,))

        return per_sample(module, xi[None], yi[None], ni[None]).sum()

    per_sample_grads = vmap(grad(one), in_dims=(None, 0, 0, 0))

    def func_clipped_sum() -> dict[str, torch.Tensor]:
        detached = {n: p.detach() for n, p in params.items()}
        return clipped_sum(per_sample_grads(detached, x, y, release_noise), clip)

    def noisy_step(trained: dict[str, torch.Tensor], summed: dict[str, torch.Tensor], opt) -> None:
        """DP-SGD's step after the clipped sum: Gaussian noise, divided by the batch, the optimiser."""
        for n, p in trained.items():
            noise = torch.normal(0.0, sigma * clip, p.shape, generator=noise_gen)
            p.grad = (summed[n] + noise) / args.batch
        opt.step()

    def step_func():
        noisy_step(params, func_clipped_sum(), func_opt)

    # ghost clipping, the default: make_private(grad_sample_mode="ghost"), the same batch every step
    ghosted = copy.deepcopy(generator)
    ghost_adam = torch.optim.Adam([p for p in ghosted.parameters() if p.requires_grad], lr=1e-9)
    ghost_cfg = cfg.dp_sgd.model_copy(update={"target_epsilon": None, "noise_multiplier": sigma})
    assert ghost_cfg.grad_sample_mode == "ghost"
    loader = DataLoader(data, batch_size=args.batch)
    ghost = make_private(ghosted, ghost_adam, loader, ghost_cfg, 1, randomness=Randomness.seeded(1))

    def ghost_clipped_sum() -> dict[str, torch.Tensor]:
        ghost.optimizer.zero_grad(set_to_none=True)
        ghost.backward(per_sample(ghosted, x, y, release_noise))
        return {n: p.grad.detach().clone() for n, p in ghosted.named_parameters() if p.requires_grad}

    def step_ghost():
        ghost.optimizer.zero_grad(set_to_none=True)
        ghost.backward(per_sample(ghosted, x, y, release_noise))
        ghost.optimizer.step()

    # Opacus' own fast gradient clipping, fed the per-sample losses
    fgc = GradSampleModuleFastGradientClipping(copy.deepcopy(generator), max_grad_norm=clip, use_ghost_clipping=True)
    fgc_opt = DPOptimizerFastGradientClipping(
        torch.optim.Adam([p for p in fgc.parameters() if p.requires_grad], lr=1e-9),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=args.batch,
    )

    def fgc_backward() -> None:
        fgc_opt.zero_grad(set_to_none=True)
        fgc.enable_hooks()
        DPTensorFastGradientClipping(fgc, fgc_opt, per_sample(fgc, x, y, release_noise), "mean").backward()

    def fgc_clipped_sum() -> dict[str, torch.Tensor]:
        fgc_backward()
        return {n: p.grad.detach().clone() for n, p in zip(names, fgc_opt.params, strict=True)}

    def step_fgc():
        fgc_backward()
        fgc_opt.step()

    def worst(candidate: dict[str, torch.Tensor]) -> float:
        scale = max(float(r.abs().max()) for r in reference.values())
        return max(float((candidate[n] - reference[n]).abs().max()) for n in names) / scale

    errors = {
        "opacus hooks": worst(opacus_clipped_sum()),
        "torch.func": worst(func_clipped_sum()),
        "ghost (default)": worst(ghost_clipped_sum()),
        "opacus ghost": worst(fgc_clipped_sum()),
    }
    variants = {
        "no DP": step_plain,
        "opacus hooks": step_opacus,
        "torch.func": step_func,
        "ghost (default)": step_ghost,
        "opacus ghost": step_fgc,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.steps):
        for name, fn in variants.items():  # interleaved: drift falls on every variant
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["no DP"])
    print(f"one device's DP-SGD step: demo model, batch {args.batch}, {args.threads} thread(s), {args.steps} steps")
    print(f"{'variant':>16} {'ms/step':>9} {'vs no DP':>9} {'clipped-sum error':>18}")
    for name, t in times.items():
        err = f"{errors[name]:.1e}" if name in errors else "-"
        print(f"{name:>16} {statistics.median(t) * 1e3:>9.1f} {statistics.median(t) / base:>8.2f}x {err:>18}")
    print("(error: max |variant - per-sample reference| / max |reference|, over the clipped summed gradient)")


if __name__ == "__main__":
    main()
