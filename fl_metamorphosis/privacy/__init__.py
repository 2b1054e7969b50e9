"""Weight-level DP-SGD (Opacus) and feature-level DP (clip + noise of released features)."""

from .dp_sgd import PrivateTraining, calibrate_noise_multiplier, history_epsilon, make_private, reference_epsilon
from .feature_noise import FeatureDPReport, account_release, clip_features, gaussian_epsilon, release
from .group_dp_sgd import PrivateGroupTraining, make_private_groups, record_level

__all__ = [
    "FeatureDPReport",
    "PrivateGroupTraining",
    "PrivateTraining",
    "account_release",
    "calibrate_noise_multiplier",
    "clip_features",
    "gaussian_epsilon",
    "history_epsilon",
    "make_private",
    "make_private_groups",
    "record_level",
    "reference_epsilon",
    "release",
]
