"""Bias-corrected distance correlation between released features and the input, and between tasks."""

from __future__ import annotations

import itertools

import torch

from ..losses import u_distance_correlation_sqr


@torch.no_grad()
def dependence_report(features: torch.Tensor, images: torch.Tensor, task_names: list[str]) -> dict[str, float]:
    """``{"t~input": dCor^2, "t~s": dCor^2}`` on the given samples (float64 for a stable estimate)."""
    f, x = features.double(), images.double()
    out = {f"{name}~input": float(u_distance_correlation_sqr(f[:, t], x)) for t, name in enumerate(task_names)}
    for t, s in itertools.combinations(range(len(task_names)), 2):
        out[f"{task_names[t]}~{task_names[s]}"] = float(u_distance_correlation_sqr(f[:, t], f[:, s]))
    return out
