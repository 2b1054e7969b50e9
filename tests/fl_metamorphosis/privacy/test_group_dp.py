"""Group-level DP-SGD (nopeek): the groups, the pooled gradients, and the pair-level epsilon."""

import copy
import math

import pytest
import torch
from local_rounds import local_round

from fl_metamorphosis.config import DPSGDConfig, build_config
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.model import build_heads
from fl_metamorphosis.privacy import StepHistory, group_privacy, make_private_groups, reference_epsilon
from fl_metamorphosis.privacy.accounting import calibrate_group_noise, group_target
from fl_metamorphosis.privacy.group_dp_sgd import group_of
from fl_metamorphosis.privacy.randomness import Randomness
from fl_metamorphosis.training.epoch import group_loss
from fl_metamorphosis.training.local_round import build_generator, privacy_plan


def test_a_pairs_group_depends_on_that_pair_alone(tiny_split):
    images = tiny_split.train.images[:200]
    groups = group_of(images, 12, key=3)
    assert torch.equal(group_of(images[1:], 12, key=3), groups[1:])  # removing one pair moves no other
    assert len(torch.unique(groups)) == 12 and not torch.equal(group_of(images, 12, key=4), groups)


def test_pooled_group_gradients_sum_to_the_plain_gradient(tiny_overrides, tiny_split):
    """With no noise and no clipping, one private step is one plain step on the summed group loss."""
    cfg = build_config(None, [*tiny_overrides, "methods=['nopeek']"])
    data = tiny_split.train.subset(torch.arange(160))
    torch.manual_seed(0)
    gen = build_generator(cfg, data)
    heads = build_heads(gen.feature_shape, [10, 10], cfg.model).requires_grad_(False)
    plain = copy.deepcopy(gen)
    objective = method_plan(cfg, "nopeek").objective
    dp = cfg.dp_sgd.model_copy(update={"max_grad_norm": 1e6})
    private = make_private_groups(
        gen, torch.optim.SGD(gen.parameters(), lr=0.1), data, dp, 1, 16, 4, 0, 0.0, randomness=Randomness.seeded(0)
    )
    batch = next(b for b in private.loader if b.groups >= 2)
    feats, att = private.module(batch.images)
    private.step(
        group_loss(objective, heads, feats, att, batch.labels, feats, batch.images, batch.group, batch.groups), batch
    )

    f2, a2 = plain(batch.images)
    group_loss(objective, heads, f2, a2, batch.labels, f2, batch.images, batch.group, batch.groups).backward()
    for (name, p), p0 in zip(gen.named_parameters(), plain.parameters(), strict=True):
        expected = p0.detach() - 0.1 * p0.grad
        assert torch.allclose(p.detach(), expected, atol=1e-5), name


def test_pair_level_epsilon_is_the_group_privacy_fixed_point_and_meets_the_target():
    cfg = DPSGDConfig(target_epsilon=8.0)
    eps_g, delta_g = group_target(cfg)
    assert eps_g == 4.0 and delta_g == pytest.approx(1e-5 / (2 * math.exp(4.0)))

    q, steps = 0.128, 70  # 16 of 125 groups a batch: 7 batches an epoch, 10 epochs
    sigma = calibrate_group_noise(cfg, q, steps)
    pair = StepHistory.of([(sigma, q, steps)]).epsilon(1e-5, grouped=True)
    assert pair == pytest.approx(8.0, abs=0.1)  # the steps taken spend the whole budget
    # the same conversion over dp-accounting's accountant agrees with Opacus'
    reference = group_privacy(lambda d: reference_epsilon(sigma, q, steps, d), 1e-5)
    assert reference == pytest.approx(pair, rel=0.02)
    # and it is more than the per-sample reading of the same steps (the price of the group unit)
    assert pair > reference_epsilon(sigma, q, steps, 1e-5)


def test_a_nopeek_device_trains_with_a_cumulative_pair_level_budget(tiny_overrides, tiny_split):
    cfg = build_config(None, [*tiny_overrides, "methods=['nopeek']", "federated.rounds=2"])
    data = tiny_split.train.subset(torch.arange(256))
    torch.manual_seed(0)
    gen = build_generator(cfg, data)
    heads = build_heads(gen.feature_shape, [10, 10], cfg.model)
    gen_w, head_w = gen.state_dict(), heads.state_dict()
    plan = privacy_plan(cfg, data)
    assert plan.grouped
    sigma = plan.noise_multiplier(2)
    first = local_round(cfg, data, gen_w, head_w, StepHistory(), seed=1, budget=8.0, sigma=sigma)
    second = local_round(cfg, data, gen_w, head_w, first.history, seed=2, budget=8.0, sigma=sigma)
    assert 0 < first.epsilon < second.epsilon <= 8.0 + 0.1
    assert second.epsilon > 7.8  # calibrated for the steps it takes: the budget is spent, not left over
    assert second.epsilon == pytest.approx(second.history.epsilon(cfg.dp_sgd.delta, grouped=True))
    spent = local_round(cfg, data, gen_w, head_w, second.history, seed=3, budget=8.0, sigma=sigma)
    assert spent.declined and spent.generator_weights is None  # a third round would exceed the budget
