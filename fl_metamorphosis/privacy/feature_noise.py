"""Feature-level DP: clip every released task feature, add calibrated noise, account the release.

A released feature ``F_t(x)`` is clipped to norm ``C`` (L2 for Gaussian, L1 for Laplace). Any two
inputs then give features at most ``2C`` apart, so ``2C`` is the sensitivity of one release, and the
release of one sample's feature is an (epsilon, delta) local-DP mechanism with respect to that sample.
Gaussian: the tight epsilon of the Gaussian mechanism, from dp-accounting's privacy-loss distribution
(checked in the tests against the analytic Gaussian mechanism of Balle & Wang 2018). Laplace: pure
epsilon = 2C / b. Releasing T task features of one input composes T such mechanisms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from dp_accounting.pld import privacy_loss_distribution as pld
from scipy.optimize import brentq
from scipy.stats import norm

from ..config import FeatureDPConfig


def clip_features(features: torch.Tensor, clip_norm: float, p: int = 2) -> torch.Tensor:
    """Scale each sample's task feature ``features[i, t]`` to Lp norm at most ``clip_norm``."""
    flat = features.flatten(2)
    norms = flat.norm(p=p, dim=-1, keepdim=True)
    scale = torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
    return (flat * scale).view_as(features)


def release(features: torch.Tensor, cfg: FeatureDPConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """What leaves the device: clipped and noised task features ``[B, T, ...]`` (differentiable)."""
    if not cfg.enabled:
        return features
    if cfg.mechanism == "gaussian":
        clipped = clip_features(features, cfg.clip_norm, p=2)
        noise = torch.randn(clipped.shape, generator=generator, device=clipped.device) * cfg.noise_std
    else:
        clipped = clip_features(features, cfg.clip_norm, p=1)
        u = torch.rand(clipped.shape, generator=generator, device=clipped.device) - 0.5
        noise = -cfg.noise_std * torch.sign(u) * torch.log1p(-2 * u.abs())  # inverse-CDF Laplace(0, b)
    return clipped + noise


def gaussian_epsilon(noise_std: float, sensitivity: float, delta: float, releases: int = 1) -> float:
    """Tight epsilon of ``releases`` Gaussian mechanisms (std ``noise_std``, L2 sensitivity) at delta."""
    dist = pld.from_gaussian_mechanism(
        standard_deviation=noise_std / sensitivity, sensitivity=1.0, value_discretization_interval=1e-3
    )
    if releases > 1:
        dist = dist.self_compose(releases)
    return float(dist.get_epsilon_for_delta(delta))


def analytic_gaussian_delta(epsilon: float, noise_std: float, sensitivity: float) -> float:
    """Balle & Wang (2018), Thm. 8: the exact delta(epsilon) of one Gaussian mechanism."""
    a = sensitivity / (2 * noise_std)
    b = epsilon * noise_std / sensitivity
    return float(norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b))


def gaussian_noise_std_for(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest std that makes one Gaussian release (epsilon, delta)-DP (analytic calibration)."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got epsilon={epsilon}, delta={delta}")
    return brentq(
        lambda s: analytic_gaussian_delta(epsilon, s, sensitivity) - delta, 1e-6 * sensitivity, 1e6 * sensitivity
    )


@dataclass(frozen=True)
class FeatureDPReport:
    mechanism: str
    clip_norm: float
    noise_std: float
    sensitivity: float
    delta: float
    epsilon: float  # one task feature of one input
    epsilon_all_tasks: float  # all T task features of one input, composed

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def account_release(cfg: FeatureDPConfig, num_tasks: int) -> FeatureDPReport | None:
    """The accounted per-release epsilon of a config, or None when feature DP is off."""
    if not cfg.enabled:
        return None
    sensitivity = 2 * cfg.clip_norm
    if cfg.mechanism == "gaussian":
        eps = gaussian_epsilon(cfg.noise_std, sensitivity, cfg.delta)
        eps_all = gaussian_epsilon(cfg.noise_std, sensitivity, cfg.delta, releases=num_tasks)
        delta = cfg.delta
    else:
        eps, delta = sensitivity / cfg.noise_std, 0.0
        eps_all = num_tasks * eps  # pure DP composes additively
    return FeatureDPReport(cfg.mechanism, cfg.clip_norm, cfg.noise_std, sensitivity, delta, eps, eps_all)
