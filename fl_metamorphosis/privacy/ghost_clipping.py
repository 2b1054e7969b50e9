"""DP-SGD by ghost clipping: each sample's gradient norm without forming its gradient.

DP-SGD needs every sample's gradient norm to clip it. Opacus' hooks form each sample's gradient of
every parameter (``[B, *p.shape]`` per parameter), clip them and sum; on a model this small that is
most of a device's step (``benchmarks/dp_step.py``). The norms can be had more cheaply:

* a forward hook keeps each layer's input ``a``; one backward pass, to the layers' OUTPUTS only,
  gives their gradients ``g`` (no parameter gradient is formed);
* a Linear layer's per-sample weight gradient is ``g_i a_i^T``, so its squared norm is
  ``||g_i||^2 ||a_i||^2``; a convolution's is ``G_i U_i^T`` with ``U_i`` the unfolded input (small
  here, so it is formed); GroupNorm's affine gradients are sums over positions of ``g * x_hat`` and ``g``;
* a second backward pass of ``sum_i c_i loss_i``, with ``c_i = min(1, C / ||grad_i||)``, gives the sum
  of clipped per-sample gradients directly.

This is the "ghost clipping" of Li et al. (2022) and Bu et al. (2023). It is exact (not an
approximation) when sample i's loss depends on sample i alone: every per-sample objective here, where
GroupNorm normalises within a sample and the released-feature noise is drawn per sample. Methods with
a batch statistic clip per group of pairs instead (``group_dp_sgd.py``).

What comes after the clipped sum is Opacus' own: ``DPOptimizerFastGradientClipping`` adds the noise
(from the caller's ``Randomness``: ``secret_noise.py``, as in ``dp_sgd.py``), scales by the expected
batch size and calls the accountant's step hook. Opacus' ``GradSampleModuleFastGradientClipping``
computes the same norms but runs a full first backward and forms the convolutions' per-sample
gradients through its hooks, which is slower on the device's model (the figures: ``docs/federated.md``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import nn
from torch.nn import functional as nnf

from .randomness import Randomness
from .secret_noise import SecretNoise

_COVERED = (nn.Linear, nn.Conv2d, nn.GroupNorm)


class GhostNorms:
    """Per-sample squared gradient norms of ``module``'s trainable parameters, from layer inputs and
    output gradients. Attach once; each training forward records, ``squared_norms`` consumes."""

    def __init__(self, module: nn.Module) -> None:
        self.layers = [
            m for m in module.modules() if isinstance(m, _COVERED) and any(p.requires_grad for p in m.parameters(False))
        ]
        self.covered = {id(p) for m in self.layers for p in m.parameters(recurse=False)}
        for name, p in module.named_parameters():
            if p.requires_grad and id(p) not in self.covered:
                raise ValueError(
                    f"ghost clipping covers Linear, Conv2d and GroupNorm layers; parameter {name!r} is in another "
                    "kind of layer: set dp_sgd.grad_sample_mode='hooks'"
                )
        self._seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in self.layers:
            layer.register_forward_hook(self._record)

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not (layer.training and torch.is_grad_enabled()):
            return
        if layer in self._seen:  # a second call would need the sum of two outer products per sample
            raise ValueError(f"ghost clipping: {layer} ran twice in one forward (shared weights); use 'hooks'")
        self._seen[layer] = (inputs[0].detach(), output)

    def squared_norms(self, losses: torch.Tensor) -> torch.Tensor:
        """``[B]``: each sample's squared gradient norm of ``losses`` (``[B]``, from the last training
        forward) over the trainable parameters. The graph is kept for the clip-weighted backward."""
        seen, self._seen = self._seen, {}
        total = losses.new_zeros(losses.shape[0])
        layers = [m for m in self.layers if m in seen]
        if not layers or losses.numel() == 0:
            return total
        grads = torch.autograd.grad(losses.sum(), [seen[m][1] for m in layers], retain_graph=True, allow_unused=True)
        for layer, g in zip(layers, grads, strict=True):
            if g is not None:
                total = total + _layer_squared_norms(layer, seen[layer][0], g)
        return total


def _layer_squared_norms(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    weight, bias = layer.weight, layer.bias
    total = g.new_zeros(g.shape[0])
    if isinstance(layer, nn.Linear):
        if a.dim() == 2:
            if weight.requires_grad:
                total = total + a.pow(2).sum(1) * g.pow(2).sum(1)
            bias_grad = g
        else:  # applied per position: the weight gradient sums outer products over positions
            a, g = a.flatten(1, -2), g.flatten(1, -2)  # [B, P, in], [B, P, out]
            if weight.requires_grad:
                total = total + torch.bmm(g.transpose(1, 2), a).pow(2).flatten(1).sum(1)
            bias_grad = g.sum(1)
    elif isinstance(layer, nn.Conv2d):
        gf = g.flatten(2)  # [B, out, L]
        if weight.requires_grad:
            u = nnf.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # [B, in*k*k, L]
            total = total + torch.bmm(gf, u.transpose(1, 2)).pow(2).flatten(1).sum(1)
        bias_grad = gf.sum(2)
    else:  # GroupNorm
        if weight is not None and weight.requires_grad:
            x_hat = nnf.group_norm(a, layer.num_groups, eps=layer.eps)
            total = total + (g * x_hat).flatten(2).sum(2).pow(2).sum(1)
        bias_grad = g.flatten(2).sum(2)
    if bias is not None and bias.requires_grad:
        total = total + bias_grad.pow(2).sum(1)
    return total


class GhostClippingDPOptimizer(SecretNoise, DPOptimizerFastGradientClipping):
    """Opacus' optimizer for gradients that arrive already clipped and summed, with the Gaussian noise
    from a ``Randomness`` (by default the OS CSPRNG), as ``SecretNoiseDPOptimizer``.

    The clipped sum must come from ``backward``: a step after a plain ``loss.backward()`` would treat an
    unclipped gradient as clipped, so it is refused.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, module: nn.Module, randomness: Randomness, **kwargs):
        super().__init__(optimizer, randomness=randomness, **kwargs)
        self.norms = GhostNorms(module)
        if any(id(p) not in self.norms.covered for p in self.params):
            raise ValueError("ghost clipping: the optimizer trains parameters outside the private module")
        self._clipped = False

    def backward(self, per_sample: torch.Tensor, others: Iterable[nn.Parameter] = ()) -> None:
        """Leave in each private parameter's ``.grad`` the sum over samples of its clipped gradient.

        ``others`` (parameters outside the private module, e.g. server-side heads trained alongside)
        get the plain gradient of the MEAN loss, as they would from ``per_sample.mean().backward()``.
        """
        others = [p for p in others if p.requires_grad]
        squared = self.norms.squared_norms(per_sample)
        mean_grads = (
            torch.autograd.grad(per_sample.sum(), others, retain_graph=True, allow_unused=True) if others else []
        )
        factor = (self.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0).detach()
        (factor * per_sample).sum().backward()
        for p in self.params:  # a parameter outside this batch's graph (an empty Poisson batch)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for p, g in zip(others, mean_grads, strict=True):
            p.grad = None if g is None else g / max(1, per_sample.shape[0])
        self._clipped = True

    def accumulate(self) -> None:
        for p in self.params:  # one batch per step (Poisson sampling forbids accumulation): no copy
            p.summed_grad = p.grad.detach()

    def pre_step(self, closure=None):
        if not self._clipped:
            raise RuntimeError("ghost clipping: call PrivateTraining.backward(per_sample_loss) before the step")
        self._clipped = False
        return super().pre_step(closure)
