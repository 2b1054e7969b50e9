import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader

from fl_metamorphosis.config import DPSGDConfig, FeatureDPConfig, ModelConfig
from fl_metamorphosis.model import FeatureGenerator
from fl_metamorphosis.privacy import account_release, clip_features, gaussian_epsilon, make_private, reference_epsilon
from fl_metamorphosis.privacy.feature_noise import analytic_gaussian_delta, gaussian_noise_std_for, release
from fl_metamorphosis.privacy.randomness import Randomness


def test_opacus_rdp_agrees_with_dp_accounting():
    # The reference point of the field notes: sigma 1.1, q 256/60000, 2340 steps, delta 1e-5 -> 1.098.
    q, sigma, steps, delta = 256 / 60000, 1.1, 2340, 1e-5
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    assert acc.get_epsilon(delta) == pytest.approx(reference_epsilon(sigma, q, steps, delta), rel=0.01)
    assert reference_epsilon(sigma, q, steps, delta) == pytest.approx(1.098, abs=0.01)


def test_dp_sgd_training_epsilon_matches_independent_accountant(tiny_split):
    torch.manual_seed(0)
    gen = FeatureGenerator("metamorphosis", tiny_split.train.image_shape, 2, ModelConfig(feature_dim=16))
    loader = DataLoader(tiny_split.train, batch_size=60)
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    cfg = DPSGDConfig(target_epsilon=3.0, delta=1e-5)
    private = make_private(gen, opt, loader, cfg, epochs=2, randomness=Randomness.secret())
    steps = 0
    for _ in range(2):
        for x, _y in private.loader:
            feats, _ = private.module(x)
            private.optimizer.zero_grad()
            private.backward(feats.pow(2).flatten(1).mean(1))
            private.optimizer.step()
            steps += 1
    eps = private.epsilon()
    assert eps == pytest.approx(reference_epsilon(private.noise_multiplier, private.sample_rate, steps, 1e-5), rel=0.02)
    assert eps <= 3.0 + 0.05  # calibrated once to the target for exactly these steps
    # the weights actually moved under clipped, noised gradients
    assert all(p.grad is not None for p in gen.parameters())


def test_clip_features_bounds_each_task_feature():
    f = torch.randn(10, 3, 20) * 5
    for p in (1, 2):
        clipped = clip_features(f, 1.5, p=p)
        assert torch.all(clipped.flatten(2).norm(p=p, dim=-1) <= 1.5 + 1e-5)
    small = torch.full((2, 1, 4), 0.01)
    assert torch.allclose(clip_features(small, 1.0), small)  # already inside: untouched


def test_release_noise_has_the_configured_scale():
    g = Randomness.secret()
    zeros = torch.zeros(4000, 2, 50)
    gauss = release(zeros, FeatureDPConfig(noise_std=0.3), g)
    assert float(gauss.std()) == pytest.approx(0.3, rel=0.02)
    lap = release(zeros, FeatureDPConfig(mechanism="laplace", noise_std=0.3), g)
    assert float(lap.std()) == pytest.approx(0.3 * math.sqrt(2), rel=0.03)  # Laplace(b) has std b*sqrt(2)
    assert torch.equal(release(zeros, FeatureDPConfig(enabled=False), g), zeros)


@pytest.mark.parametrize("noise_std", [0.5, 2.0, 8.0])
def test_gaussian_epsilon_matches_the_analytic_gaussian_mechanism(noise_std):
    eps = gaussian_epsilon(noise_std, sensitivity=2.0, delta=1e-5)
    # Balle & Wang's exact delta(eps) at the accountant's epsilon is the target delta (up to discretisation).
    assert analytic_gaussian_delta(eps, noise_std, 2.0) == pytest.approx(1e-5, rel=0.05)


@pytest.mark.parametrize("epsilon", [0.3, 0.9])
def test_classical_gaussian_calibration_is_within_budget(epsilon):
    # Dwork & Roth Thm. A.1: sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon is (eps, delta)-DP for eps < 1.
    sigma = 2.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / epsilon
    assert gaussian_epsilon(sigma, 2.0, 1e-5) <= epsilon
    # the analytic calibration needs less noise for the same guarantee, and hits it exactly
    tight = gaussian_noise_std_for(epsilon, 1e-5, 2.0)
    assert tight < sigma
    assert gaussian_epsilon(tight, 2.0, 1e-5) == pytest.approx(epsilon, rel=0.01)


def test_account_release_reports_per_task_and_all_tasks():
    rep = account_release(FeatureDPConfig(clip_norm=1.0, noise_std=4.0), num_tasks=2)
    assert rep.sensitivity == 2.0
    assert rep.epsilon == pytest.approx(gaussian_epsilon(4.0, 2.0, 1e-5))
    assert rep.epsilon < rep.epsilon_all_tasks < 2 * rep.epsilon + 1e-9
    lap = account_release(FeatureDPConfig(mechanism="laplace", clip_norm=1.0, noise_std=0.5), num_tasks=2)
    assert (lap.epsilon, lap.epsilon_all_tasks, lap.delta) == (4.0, 8.0, 0.0)
    assert account_release(FeatureDPConfig(enabled=False), 2) is None


def test_every_name_of_the_privacy_package_resolves_to_its_module():
    import fl_metamorphosis.privacy as privacy

    assert sorted(privacy.__all__) == sorted(privacy._HOME)
    for name, module in privacy._HOME.items():
        assert getattr(privacy, name).__module__ == f"fl_metamorphosis.privacy.{module}", name
