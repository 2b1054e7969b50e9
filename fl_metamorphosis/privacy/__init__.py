"""Weight-level DP-SGD (Opacus) and feature-level DP (clip + noise of released features)."""

from .dp_sgd import PrivateTraining, calibrate_noise_multiplier, make_private, reference_epsilon
from .feature_noise import FeatureDPReport, account_release, clip_features, gaussian_epsilon, release

__all__ = [
    "FeatureDPReport",
    "PrivateTraining",
    "account_release",
    "calibrate_noise_multiplier",
    "clip_features",
    "gaussian_epsilon",
    "make_private",
    "reference_epsilon",
    "release",
]
