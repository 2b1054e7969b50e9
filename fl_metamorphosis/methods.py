"""The feature-generation methods, each as the parts it is made of.

Every method uses the same encoder, heads, DP-SGD and devices; they differ in how the encoder's shared
feature F becomes one feature per task, what the training objective adds, and whether the released
features are clipped and noised. Keeping that as data (rather than ``if method == ...`` spread through
the code) is what lets the comparison train, release and audit every method through one pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .losses import Objective

if TYPE_CHECKING:  # config imports nothing of the methods; only the plan reads a config
    from .config import ExperimentConfig, FeatureDPConfig

Split = Literal["shared", "cross_sec", "projection"]


@dataclass(frozen=True)
class MethodSpec:
    split: Split  # shared: every task gets F; cross_sec: a_t * F; projection: a linear map of F per task
    decorrelation: bool  # penalise task features for sharing information (form depends on ``split``)
    feature_noise: bool  # clip and noise each released task feature (feature_dp)
    adversary: bool  # gradient-reversal adversaries: other tasks' labels and the input, from each F_t
    input_dcor: bool  # NoPeek: distance correlation between the feature and the input (a batch statistic)
    summary: str


METHODS: dict[str, MethodSpec] = {
    "universal": MethodSpec("shared", False, False, False, False, "one shared feature for every task"),
    "adversarial": MethodSpec(
        "projection", False, False, True, False, "per-task features trained against gradient-reversal adversaries"
    ),
    "nopeek": MethodSpec("shared", False, False, False, True, "shared feature, distance correlation to the input"),
    "metamorphosis": MethodSpec("cross_sec", True, True, False, False, "Cross-SEC + de-correlation + feature DP"),
    "metamorphosis_no_noise": MethodSpec("cross_sec", True, False, False, False, "ablation: no feature noise"),
    "metamorphosis_no_decorrelation": MethodSpec("cross_sec", False, True, False, False, "ablation: no de-correlation"),
    "metamorphosis_no_crosssec": MethodSpec(
        "projection", True, True, False, False, "ablation: per-task linear maps instead of Cross-SEC"
    ),
    # where both tasks describe one object, attention and noise alone leave the object's rest in each
    # feature; the input decoder's reversed gradient is a per-sample (DP-SGD-safe) push away from the input
    "metamorphosis_adversarial": MethodSpec(
        "cross_sec", True, True, True, False, "extension: MetaMorphosis + gradient-reversal adversaries"
    ),
}


def method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None


@dataclass(frozen=True)
class MethodPlan:
    """One method resolved once against an experiment: every question a device, the server or the audit
    asks about "the method" has its answer here, worked out in one place."""

    name: str
    spec: MethodSpec
    feature_dp: FeatureDPConfig  # what it releases: clipped and noised task features, or the raw ones
    objective: Objective  # what its training loss adds to the tasks' cross-entropy
    grouped: bool  # DP-SGD clips per group of pairs: the objective is a batch statistic (group_dp_sgd.py)


def method_plan(cfg: ExperimentConfig, method: str | None = None) -> MethodPlan:
    """``method`` against ``cfg``; by default the config's last method, the one a federated run trains."""
    name = cfg.methods[-1] if method is None else method
    spec, loss = method_spec(name), cfg.loss
    feature_dp = cfg.feature_dp if spec.feature_noise else cfg.feature_dp.model_copy(update={"enabled": False})
    if spec.input_dcor:  # NoPeek: dCor(F, input) over the batch, nothing between tasks
        objective = Objective("batch", 0.0, loss.nopeek_weight)
    elif not spec.decorrelation:
        adversary_weight = loss.adversary_weight if spec.adversary else 0.0
        objective = Objective(
            "per_sample", 0.0, adversary_weight=adversary_weight, adversary_objective=loss.adversary_objective
        )
    else:
        objective = Objective(
            cfg.decorrelation_form(),
            loss.decorrelation_weight,
            loss.input_decorrelation_weight,
            "cosine" if spec.split == "projection" else loss.per_sample_penalty,
            loss.adversary_weight if spec.adversary else 0.0,
            loss.adversary_objective,
        )
    grouped = cfg.dp_sgd.enabled and objective.form == "batch"
    return MethodPlan(name, spec, feature_dp, objective, grouped)
