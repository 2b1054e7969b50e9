"""The training objective: task losses plus de-correlation, in the form DP-SGD allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .decorrelation import batch_decorrelation, per_sample_cosine, per_sample_impurity, per_sample_overlap

_PENALTIES = {"impurity": per_sample_impurity, "overlap": per_sample_overlap}


@dataclass(frozen=True)
class Objective:
    """``loss = mean_i [ sum_t CE_t(i) + w * penalty(i) + w_adv * adversary(i) ] (+ w * D_batch)``.

    ``penalty`` is the per-sample de-correlation: the Cross-SEC attention's overlap or impurity, or the
    squared cosine between task features (methods without Cross-SEC). The batch form replaces it with
    distance correlation over the batch, which DP-SGD cannot use.
    """

    form: Literal["batch", "per_sample"]
    weight: float
    input_weight: float = 0.0
    per_sample_penalty: Literal["impurity", "overlap", "cosine"] = "overlap"
    adversary_weight: float = 0.0
    adversary_objective: Literal["reverse", "entropy"] = "reverse"

    def per_sample(
        self,
        heads: nn.ModuleList,
        released: torch.Tensor,
        attention: torch.Tensor,
        labels: torch.Tensor,
        features: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
        adversary: nn.Module | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample loss ``[B]`` and each head's output. ``features`` (before release) feed the cosine
        penalty and the adversary; ``inputs`` the adversary's reconstruction."""
        outputs = [head(released[:, t]) for t, head in enumerate(heads)]
        loss = self.from_outputs(heads, outputs, attention, labels, features)
        if self.adversary_weight > 0:
            if adversary is None or features is None or inputs is None:
                raise ValueError("the adversarial objective needs the adversary, the features and the inputs")
            loss = loss + self.adversary_weight * adversary.per_sample_loss(
                features, inputs, labels, self.adversary_objective
            )
        return loss, outputs

    def from_outputs(
        self,
        heads: nn.ModuleList,
        outputs: list[torch.Tensor],
        attention: torch.Tensor,
        labels: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample loss ``[B]`` (task losses + per-sample de-correlation) from the heads' outputs."""
        loss = sum(
            head.per_sample_loss(out, labels[:, t]) for t, (head, out) in enumerate(zip(heads, outputs, strict=True))
        )
        if self.form == "per_sample" and self.weight > 0:
            if self.per_sample_penalty == "cosine":
                if features is None:
                    raise ValueError("the cosine penalty needs the task features")
                loss = loss + self.weight * per_sample_cosine(features)
            else:
                loss = loss + self.weight * _PENALTIES[self.per_sample_penalty](attention)
        return loss

    def batch_term(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The batch statistic (zero in the per-sample form, which must not use one)."""
        if self.form != "batch" or (self.weight == 0 and self.input_weight == 0):
            return features.new_zeros(())
        return batch_decorrelation(features, inputs, self.weight, self.input_weight)
