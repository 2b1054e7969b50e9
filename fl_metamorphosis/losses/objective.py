"""The training objective: task losses plus de-correlation, in the form DP-SGD allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .decorrelation import batch_decorrelation, per_sample_impurity, per_sample_overlap


@dataclass(frozen=True)
class Objective:
    """``loss = mean_i [ sum_t CE_t(i) + w * overlap(i) ]`` (per_sample) or ``... + w * D_batch`` (batch)."""

    form: Literal["batch", "per_sample"]
    weight: float
    input_weight: float = 0.0
    per_sample_penalty: Literal["impurity", "overlap"] = "overlap"

    def per_sample(
        self, heads: nn.ModuleList, released: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample loss ``[B]`` (task losses + per-sample de-correlation) and each head's output."""
        outputs = [head(released[:, t]) for t, head in enumerate(heads)]
        return self.from_outputs(heads, outputs, attention, labels), outputs

    def from_outputs(
        self, heads: nn.ModuleList, outputs: list[torch.Tensor], attention: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample loss ``[B]`` from the heads' outputs already computed."""
        loss = sum(
            head.per_sample_loss(out, labels[:, t]) for t, (head, out) in enumerate(zip(heads, outputs, strict=True))
        )
        if self.form == "per_sample" and self.weight > 0:
            penalty = per_sample_impurity if self.per_sample_penalty == "impurity" else per_sample_overlap
            loss = loss + self.weight * penalty(attention)
        return loss

    def batch_term(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The batch statistic (zero in the per-sample form, which must not use one)."""
        if self.form != "batch" or (self.weight == 0 and self.input_weight == 0):
            return features.new_zeros(())
        return batch_decorrelation(features, inputs, self.weight, self.input_weight)
