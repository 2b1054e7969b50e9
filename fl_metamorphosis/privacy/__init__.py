"""Weight-level DP-SGD (Opacus), feature-level DP (clip + noise of released features), and the one
accounting module (``accounting.py``) every epsilon comes from."""

from .accounting import (
    DevicePrivacyPlan,
    ServerLedger,
    StepHistory,
    calibrate_noise_multiplier,
    group_privacy,
    reference_epsilon,
)
from .dp_sgd import PrivateTraining, make_private
from .feature_noise import FeatureDPReport, account_release, clip_features, gaussian_epsilon, release
from .group_dp_sgd import PrivateGroupTraining, make_private_groups

__all__ = [
    "DevicePrivacyPlan",
    "FeatureDPReport",
    "PrivateGroupTraining",
    "PrivateTraining",
    "ServerLedger",
    "StepHistory",
    "account_release",
    "calibrate_noise_multiplier",
    "clip_features",
    "gaussian_epsilon",
    "group_privacy",
    "make_private",
    "make_private_groups",
    "reference_epsilon",
    "release",
]
