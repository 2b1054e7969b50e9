import pytest
import torch
from local_rounds import local_round

from fl_metamorphosis.model import build_heads
from fl_metamorphosis.privacy import StepHistory, reference_epsilon
from fl_metamorphosis.training.local_round import build_generator


@pytest.fixture(scope="module")
def device_setup(tiny_cfg, tiny_split):
    data = tiny_split.train.subset(torch.arange(256))
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg, data)
    heads = build_heads(gen.feature_shape, [10, 10], tiny_cfg.model)
    return tiny_cfg, data, gen.state_dict(), heads.state_dict()


def test_epsilon_is_cumulative_and_matches_one_accountant(device_setup):
    cfg, data, gen_w, head_w = device_setup
    history, eps = StepHistory(), []
    for rnd in range(3):
        up = local_round(cfg, data, gen_w, head_w, history, seed=rnd)
        assert up.declined is None and up.num_examples == 256
        history, gen_w = up.history, up.generator_weights
        eps.append(up.epsilon)
    assert eps[0] < eps[1] < eps[2]  # grows with every round taken part in
    ((sigma, q, steps),) = history.entries  # same sigma and rate: one entry, steps summed
    assert steps == 3 * (256 // 64) and up.round_steps == 256 // 64
    assert eps[2] == pytest.approx(StepHistory.of([(sigma, q, steps)]).epsilon(cfg.dp_sgd.delta))
    assert eps[2] == pytest.approx(reference_epsilon(sigma, q, steps, cfg.dp_sgd.delta), rel=0.02)
    assert not any(k.startswith("_module") for k in gen_w)


def test_dp_trained_heads_change_and_frozen_heads_do_not(device_setup):
    cfg, data, gen_w, head_w = device_setup
    frozen = local_round(cfg, data, gen_w, head_w, StepHistory(), seed=0, device_heads="frozen")
    trained = local_round(cfg, data, gen_w, head_w, StepHistory(), seed=0, device_heads="dp_trained")
    for up, moved in ((frozen, False), (trained, True)):
        heads = up.head_weights
        assert any(not torch.equal(heads[k], head_w[k]) for k in head_w) is moved
    assert trained.history == frozen.history  # same DP-SGD steps: the heads add no privacy cost beyond them


def test_over_budget_device_declines_without_training(device_setup):
    cfg, data, gen_w, head_w = device_setup
    first = local_round(cfg, data, gen_w, head_w, StepHistory(), seed=0)
    declined = local_round(cfg, data, gen_w, head_w, first.history, seed=1, budget=first.epsilon * 1.01)
    assert declined.generator_weights is None and declined.head_weights is None and declined.num_examples == 0
    assert "budget" in declined.declined
    assert declined.history == first.history and declined.epsilon == pytest.approx(first.epsilon)


def test_proximal_term_pulls_towards_the_global_weights(device_setup):
    cfg, data, gen_w, head_w = device_setup

    def drift(mu):
        new = local_round(cfg, data, gen_w, head_w, StepHistory(), seed=0, mu=mu).generator_weights
        return sum(float((new[k] - gen_w[k]).norm()) for k in gen_w if k.endswith("weight"))

    assert drift(200.0) < 0.7 * drift(0.0)
