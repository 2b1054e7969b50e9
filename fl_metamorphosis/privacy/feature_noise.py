"""Feature-level DP: clip every released task feature, add calibrated noise, account the release.

A released feature ``F_t(x)`` is clipped to norm ``C`` (L2 for Gaussian, L1 for Laplace). Any two
inputs then give features at most ``2C`` apart, so ``2C`` is the sensitivity of one release, and the
release of one sample's feature is an (epsilon, delta) local-DP mechanism with respect to that sample.
Gaussian: the tight epsilon of the Gaussian mechanism, from dp-accounting's privacy-loss distribution
(checked in the tests against the analytic Gaussian mechanism of Balle & Wang 2018). Laplace: pure
epsilon = 2C / b. Releasing T task features of one input composes T such mechanisms.

Every release of a pair counts: a device that releases the same pair k times (in k rounds) composes
k x T mechanisms for it, and averaging the k copies divides the noise by sqrt(k). ``account_release``
reports the per-release figure and the composition over the most releases any pair had; a device caps
that count (``feature_dp.max_releases_per_pair``, kept in its ``ReleaseLedger``). Composing n Gaussian
mechanisms of one std and sensitivity is exactly one Gaussian mechanism of std / sqrt(n), which gives the
closed-form cross-check (``analytic_gaussian_epsilon``) of dp-accounting's PLD composition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.special import log_ndtr, ndtr  # scipy.stats.norm's cdf and logcdf, without importing scipy.stats

from ..config import FeatureDPConfig
from .randomness import Randomness


def clip_features(features: torch.Tensor, clip_norm: float, p: int = 2) -> torch.Tensor:
    """Scale each sample's task feature ``features[i, t]`` to Lp norm at most ``clip_norm``."""
    flat = features.flatten(2)
    norms = flat.norm(p=p, dim=-1, keepdim=True)
    scale = torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
    return (flat * scale).view_as(features)


def release(features: torch.Tensor, cfg: FeatureDPConfig, randomness: Randomness) -> torch.Tensor:
    """What leaves the device: clipped and noised task features ``[B, T, ...]`` (differentiable)."""
    if not cfg.enabled:
        return features
    if cfg.mechanism == "gaussian":
        clipped = clip_features(features, cfg.clip_norm, p=2)
        noise = randomness.normal(clipped.shape, cfg.noise_std, dtype=clipped.dtype)
    else:
        clipped = clip_features(features, cfg.clip_norm, p=1)
        noise = randomness.laplace(clipped.shape, cfg.noise_std, dtype=clipped.dtype)
    return clipped + noise.to(clipped.device)


def gaussian_epsilon(noise_std: float, sensitivity: float, delta: float, releases: int = 1) -> float:
    """Tight epsilon of ``releases`` Gaussian mechanisms (std ``noise_std``, L2 sensitivity) at delta.

    dp-accounting rounds the privacy loss up to its grid, so the figure is an upper bound whatever the
    grid's step. The loss spans about ``(sensitivity / noise_std)^2``, and so does its epsilon: a step
    that grows with ``sensitivity / noise_std`` keeps the grid's rounding small beside the epsilon while
    the grid stays small, so that accounting feature noise whose epsilons run into the hundreds takes
    milliseconds, not seconds (the tests hold it to the closed form)."""
    from dp_accounting.pld import privacy_loss_distribution as pld  # accounting only: a release never needs it

    step = 1e-3 * max(1.0, sensitivity / noise_std)
    dist = pld.from_gaussian_mechanism(
        standard_deviation=noise_std / sensitivity, sensitivity=1.0, value_discretization_interval=step
    )
    if releases > 1:
        dist = dist.self_compose(releases)
    return float(dist.get_epsilon_for_delta(delta))


def analytic_gaussian_delta(epsilon: float, noise_std: float, sensitivity: float) -> float:
    """Balle & Wang (2018), Thm. 8: the exact delta(epsilon) of one Gaussian mechanism (the second term
    in log space, so that epsilons in the hundreds do not overflow)."""
    a = sensitivity / (2 * noise_std)
    b = epsilon * noise_std / sensitivity
    return float(ndtr(a - b) - math.exp(epsilon + log_ndtr(-a - b)))


def analytic_gaussian_epsilon(noise_std: float, sensitivity: float, delta: float, releases: int = 1) -> float:
    """The exact epsilon at ``delta`` of ``releases`` Gaussian mechanisms, in closed form: their
    composition is one Gaussian mechanism of std ``noise_std / sqrt(releases)``."""
    from scipy.optimize import brentq

    std = noise_std / math.sqrt(releases)
    hi = 1.0
    while analytic_gaussian_delta(hi, std, sensitivity) > delta:
        hi *= 2
    return brentq(lambda e: analytic_gaussian_delta(e, std, sensitivity) - delta, 0.0, hi, xtol=1e-9)


def gaussian_noise_std_for(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest std that makes one Gaussian release (epsilon, delta)-DP (analytic calibration)."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got epsilon={epsilon}, delta={delta}")
    from scipy.optimize import brentq

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
    epsilon: float  # one task feature of one input, one release
    epsilon_all_tasks: float  # all T task features of one input, one release
    releases_per_pair: int  # the most times any pair was released (1 for a model audited alone)
    epsilon_per_task_owner: float  # one task's features of the most-released pair, every release composed
    epsilon_per_pair: float  # every task's features of the most-released pair, every release composed
    accountant: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def account_release(cfg: FeatureDPConfig, num_tasks: int, releases_per_pair: int = 1) -> FeatureDPReport | None:
    """The accounted epsilons of a config's releases, or None when feature DP is off: per release, and
    composed over ``releases_per_pair`` releases of one pair (what a run's ledgers counted at most)."""
    if not cfg.enabled:
        return None
    sensitivity, k = 2 * cfg.clip_norm, max(1, releases_per_pair)
    if cfg.mechanism == "gaussian":
        eps = gaussian_epsilon(cfg.noise_std, sensitivity, cfg.delta)
        eps_all = gaussian_epsilon(cfg.noise_std, sensitivity, cfg.delta, releases=num_tasks)
        owner = gaussian_epsilon(cfg.noise_std, sensitivity, cfg.delta, releases=k)
        pair = gaussian_epsilon(cfg.noise_std, sensitivity, cfg.delta, releases=k * num_tasks)
        delta, accountant = cfg.delta, "dp-accounting PLD (Gaussian mechanism, composed)"
    else:
        eps, delta = sensitivity / cfg.noise_std, 0.0
        eps_all, owner, pair = num_tasks * eps, k * eps, k * num_tasks * eps  # pure DP composes additively
        accountant = "pure DP, additive composition"
    return FeatureDPReport(
        cfg.mechanism, cfg.clip_norm, cfg.noise_std, sensitivity, delta, eps, eps_all, k, owner, pair, accountant
    )
