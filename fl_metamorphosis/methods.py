"""The feature-generation methods, each as the parts it is made of.

Every method uses the same encoder, heads, DP-SGD and devices; they differ in how the encoder's shared
feature F becomes one feature per task, what the training objective adds, and whether the released
features are clipped and noised. Keeping that as data (rather than ``if method == ...`` spread through
the code) is what lets the comparison train, release and audit every method through one pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
