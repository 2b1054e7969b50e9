"""What DP-SGD costs a device's training step, by the way per-sample gradients are computed.

One process, one device of the demo (its encoder + Cross-SEC, heads frozen, the MetaMorphosis
objective with its released-feature clip and noise), one batch, side by side and interleaved:

* ``no DP``: the plain step (mean loss, backward, Adam);
* ``opacus hooks``: today's path: Opacus' GradSampleModule (per-sample gradients by module hooks),
  its DPOptimizer (per-sample clip, sum, Gaussian noise), Adam;
* ``torch.func``: per-sample gradients with ``vmap(grad(...))`` over a functional call of the same
  module, then the same clip, sum and noise by hand, Adam;
* ``ghost norms``: per-sample gradient norms without per-sample gradients (``GhostNorms``), then a
  second backward pass of the clip-weighted loss, the same noise, Adam.

Correctness: each private variant's clipped, summed gradient (before noise) is compared with a
reference computed one sample at a time (a backward pass per sample, clipped, summed). The feature
noise inside the loss is drawn once per batch and passed in, so every variant sees the same loss.

Ghost clipping (Opacus ``grad_sample_mode="ghost"``) is not in the table: it needs the loss as
``criterion(model_output, target)`` with a reduction, and this objective (task heads on released
features, per-sample de-correlation of the attention) is not of that form.

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
from opacus.optimizers import DPOptimizer  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.federated.device import build_generator  # noqa: E402
from fl_metamorphosis.flower.partition import device_datasets  # noqa: E402
from fl_metamorphosis.model import build_heads  # noqa: E402
from fl_metamorphosis.privacy.feature_noise import clip_features  # noqa: E402
from fl_metamorphosis.training import method_feature_dp  # noqa: E402
from fl_metamorphosis.training.trainer import method_objective  # noqa: E402


def setup(batch: int):
    cfg = build_config(None, ['methods=["metamorphosis"]'])
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    torch.manual_seed(0)
    generator = build_generator(cfg, data)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
    heads.requires_grad_(False)
    x, y = data.images[:batch], data.labels[:batch]
    return cfg, generator, heads, x, y


def loss_fn(cfg, generator, heads, objective, feature_dp):
    """Per-sample loss of a batch, with the release noise passed in (the same for every variant)."""

    def per_sample(module, x, y, noise):
        feats, attention = module(x)
        released = clip_features(feats, feature_dp.clip_norm) + noise
        loss, _ = objective.per_sample(heads, released, attention, y, feats, x, None)
        return loss

    return per_sample


class GhostNorms:
    """Per-sample gradient norms without per-sample gradients, for Linear, Conv2d and GroupNorm layers.

    A forward hook keeps each layer's input ``a`` and output; a first backward pass, to the outputs only,
    gives their gradients ``g``. A Linear layer's per-sample weight
    gradient is ``g_i a_i^T``, so its norm is ``||g_i|| ||a_i||``. A convolution's is ``G_i U_i^T`` with
    ``U_i`` the unfolded input: small here, so it is formed. GroupNorm's affine gradients are sums over
    positions of ``g * x_hat`` and ``g``. A second backward pass of ``sum_i c_i loss_i`` (``c_i`` the clip
    factors) then gives the clipped sum directly: the "ghost clipping" of Li et al. (2022) and Bu et al.
    (2023), valid here because each sample's loss depends on that sample alone."""

    def __init__(self, module: torch.nn.Module) -> None:
        kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm)
        self.layers = [m for m in module.modules() if isinstance(m, kinds)]
        covered = {id(p) for m in self.layers for p in m.parameters(recurse=False)}
        if any(p.requires_grad and id(p) not in covered for p in module.parameters()):
            raise ValueError("a trainable parameter outside Linear, Conv2d and GroupNorm layers")
        self.seen: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (input, output)
        for layer in self.layers:
            layer.register_forward_hook(lambda m, inp, out: self.seen.__setitem__(m, (inp[0].detach(), out)))

    def squared_norms(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-sample squared gradient norms of ``losses`` (``[B]``, from the last forward pass). Only
        the layers' output gradients are computed (no parameter gradient); the graph is kept."""
        outputs = [self.seen[m][1] for m in self.layers]
        grads = torch.autograd.grad(losses.sum(), outputs, retain_graph=True)
        total = 0.0
        for m, g in zip(self.layers, grads, strict=True):
            a = self.seen[m][0]
            if isinstance(m, torch.nn.Linear):
                if a.dim() != 2:
                    raise ValueError("ghost norms here cover Linear layers on [B, features] inputs only")
                gg = g.pow(2).sum(1)
                total = total + a.pow(2).sum(1) * gg + (gg if m.bias is not None else 0.0)
            elif isinstance(m, torch.nn.Conv2d):
                u = torch.nn.functional.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # [B, Cin*k*k, L]
                gf = g.flatten(2)  # [B, Cout, L]
                total = total + torch.bmm(gf, u.transpose(1, 2)).pow(2).flatten(1).sum(1)
                if m.bias is not None:
                    total = total + gf.sum(2).pow(2).sum(1)
            else:  # GroupNorm
                x_hat = torch.nn.functional.group_norm(a, m.num_groups, eps=m.eps)
                total = total + (g * x_hat).flatten(2).sum(2).pow(2).sum(1) + g.flatten(2).sum(2).pow(2).sum(1)
        return total


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
    cfg, generator, heads, x, y = setup(args.batch)
    objective = method_objective("metamorphosis", cfg)
    feature_dp = method_feature_dp("metamorphosis", cfg)
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

    # ghost norms: one forward, two backward passes, no per-sample gradient
    ghosted = copy.deepcopy(generator)
    ghost = GhostNorms(ghosted)
    ghost_params = {n: p for n, p in ghosted.named_parameters() if p.requires_grad}
    ghost_opt = torch.optim.Adam(list(ghost_params.values()), lr=1e-9)

    def ghost_clipped_sum() -> dict[str, torch.Tensor]:
        ghost_opt.zero_grad(set_to_none=True)
        losses = per_sample(ghosted, x, y, release_noise)
        factor = (clip / (ghost.squared_norms(losses).sqrt() + 1e-6)).clamp(max=1.0)
        (factor * losses).sum().backward()
        return {n: p.grad for n, p in ghost_params.items()}

    def step_ghost():
        noisy_step(ghost_params, ghost_clipped_sum(), ghost_opt)

    def worst(candidate: dict[str, torch.Tensor]) -> float:
        scale = max(float(r.abs().max()) for r in reference.values())
        return max(float((candidate[n] - reference[n]).abs().max()) for n in names) / scale

    errors = {
        "opacus hooks": worst(opacus_clipped_sum()),
        "torch.func": worst(func_clipped_sum()),
        "ghost norms": worst({n: g.clone() for n, g in ghost_clipped_sum().items()}),
    }
    variants = {"no DP": step_plain, "opacus hooks": step_opacus, "torch.func": step_func, "ghost norms": step_ghost}
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
    print(f"{'variant':>14} {'ms/step':>9} {'vs no DP':>9} {'clipped-sum error':>18}")
    for name, t in times.items():
        err = f"{errors[name]:.1e}" if name in errors else "-"
        print(f"{name:>14} {statistics.median(t) * 1e3:>9.1f} {statistics.median(t) / base:>8.2f}x {err:>18}")
    print("(error: max |variant - per-sample reference| / max |reference|, over the clipped summed gradient)")


if __name__ == "__main__":
    main()
