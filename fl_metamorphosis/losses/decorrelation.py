"""De-correlation between task features, and between features and the input.

Two forms, because DP-SGD needs one and forbids the other:

* ``batch_decorrelation``: sum over task pairs of the bias-corrected squared distance correlation
  (non-linear dependence), plus optionally each task feature vs. the input. It is a statistic over the
  batch: every sample's gradient depends on every other sample, so Opacus' per-sample clipping no longer
  bounds one sample's influence and the reported epsilon would be void. Use it only without DP-SGD.
* ``per_sample_overlap``: for each sample, the overlap of the tasks' Cross-SEC attentions,
  ``sum_{t<s} <a_t, a_s> / C``. It depends on that sample alone, so it is a legal DP-SGD loss term.
  Disjoint attentions mean disjoint channels of F per task; the residual (non-linear) dependence is then
  measured by the audit, not assumed.
* ``per_sample_cosine``: for methods with a learned linear map per task instead of Cross-SEC, the
  squared cosine between each pair of the sample's task features: the same "no shared direction"
  penalty without attention, still per sample.
"""

from __future__ import annotations

import itertools

import torch

from .distance_correlation import u_distance_correlation_sqr


def batch_decorrelation(
    features: torch.Tensor, inputs: torch.Tensor | None = None, pair_weight: float = 1.0, input_weight: float = 0.0
) -> torch.Tensor:
    """Scalar: pair_weight * sum_{t<s} dCor^2(F_t, F_s) + input_weight * sum_t dCor^2(F_t, x).

    Each estimate is clamped at 0: the bias-corrected estimate scatters around 0 for independent
    samples, and pushing it below 0 would only fit noise.
    """
    num_tasks = features.shape[1]
    total = features.new_zeros(())
    for t, s in itertools.combinations(range(num_tasks), 2):
        total = total + pair_weight * u_distance_correlation_sqr(features[:, t], features[:, s]).clamp(min=0)
    if inputs is not None and input_weight > 0:
        for t in range(num_tasks):
            total = total + input_weight * u_distance_correlation_sqr(features[:, t], inputs).clamp(min=0)
    return total


def per_sample_overlap(attention: torch.Tensor) -> torch.Tensor:
    """Per-sample vector ``[B]``: sum over task pairs of the attention overlap, divided by C."""
    num_tasks, channels = attention.shape[1], attention.shape[2]
    total = attention.new_zeros(attention.shape[0])
    for t, s in itertools.combinations(range(num_tasks), 2):
        total = total + (attention[:, t] * attention[:, s]).sum(-1) / channels
    return total


def per_sample_impurity(attention: torch.Tensor) -> torch.Tensor:
    """Per-sample vector ``[B]``: mean over channels of the Gini impurity of the channel's assignment.

    Each channel is split between the T tasks and "none" (``a_none = 1 - sum_t a_t``); the impurity
    ``1 - sum_o a_o^2`` is 0 only when the channel goes wholly to one option. It contains the task-task
    overlap (twice) and also the task-none overlap: a channel half-kept by task t could otherwise let
    its attention weight vary with another task's content, and that modulation alone leaks.
    """
    none = 1 - attention.sum(1)
    return (1 - (attention**2).sum(1) - none**2).mean(-1)


def per_sample_cosine(features: torch.Tensor) -> torch.Tensor:
    """Per-sample vector ``[B]``: sum over task pairs of cos^2(F_t, F_s) of the sample's task features."""
    flat = torch.nn.functional.normalize(features.flatten(2), dim=-1)
    total = flat.new_zeros(flat.shape[0])
    for t, s in itertools.combinations(range(flat.shape[1]), 2):
        total = total + (flat[:, t] * flat[:, s]).sum(-1) ** 2
    return total
