"""Weight-level DP-SGD (Opacus), feature-level DP (clip + noise of released features), and the one
accounting module (``accounting.py``) every epsilon comes from.

The names below are imported from their modules on first use (PEP 562), not with the package: a device's
process that only releases features or evaluates (Flower starts one per message on a board) imports this
package's device modules, and must not pay for Opacus, which only DP-SGD training needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_names import lazy_names

_HOME = {
    "DevicePrivacyPlan": "accounting",
    "ServerLedger": "accounting",
    "StepHistory": "accounting",
    "calibrate_noise_multiplier": "accounting",
    "group_privacy": "accounting",
    "reference_epsilon": "accounting",
    "PrivateTraining": "dp_sgd",
    "make_private": "dp_sgd",
    "FeatureDPReport": "feature_noise",
    "account_release": "feature_noise",
    "clip_features": "feature_noise",
    "gaussian_epsilon": "feature_noise",
    "release": "feature_noise",
    "PrivateGroupTraining": "group_dp_sgd",
    "make_private_groups": "group_dp_sgd",
}

if TYPE_CHECKING:
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


__getattr__ = lazy_names(__name__, _HOME)


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
