"""Every feature-generation method trains a private step and produces one feature per task."""

import pytest
import torch
from torch.utils.data import DataLoader

from fl_metamorphosis.config import build_config
from fl_metamorphosis.losses import Objective
from fl_metamorphosis.methods import METHODS, method_plan
from fl_metamorphosis.model import FeatureGenerator, build_heads
from fl_metamorphosis.model.adversary import Adversary, reverse_gradient
from fl_metamorphosis.privacy import make_private, make_private_groups
from fl_metamorphosis.privacy.randomness import Randomness
from fl_metamorphosis.training.epoch import GroupSteps, SampleSteps, run_epoch


def test_config_method_names_are_the_registry():
    from typing import get_args

    from fl_metamorphosis.config import Method

    assert set(get_args(Method)) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_one_step_and_releases_task_features(method, tiny_overrides, tiny_split):
    cfg = build_config(None, [*tiny_overrides, f"methods=['{method}']"])
    data = tiny_split.train.subset(torch.arange(128))
    torch.manual_seed(0)
    num_classes = [t.num_classes for t in data.tasks]
    gen = FeatureGenerator(method, data.image_shape, 2, cfg.model, num_classes)
    heads = build_heads(gen.feature_shape, num_classes, cfg.model)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    loader = DataLoader(data, batch_size=32, shuffle=True)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    objective = method_plan(cfg, method).objective
    feature_dp = method_plan(cfg, method).feature_dp
    if objective.form == "batch":  # nopeek: dCor(F, input) over a group, clipped per group
        grouped = make_private_groups(gen, opt, data, cfg.dp_sgd, 1, 16, 4, 0, randomness=Randomness.seeded(0))
        loss = run_epoch(GroupSteps(grouped, heads, objective, feature_dp, Randomness.seeded(1)))
    else:
        private = make_private(gen, opt, loader, cfg.dp_sgd, 1, randomness=Randomness.seeded(0))
        steps = SampleSteps(
            private.module, heads, private.loader, objective, feature_dp, private.optimizer, Randomness.seeded(1),
            private=private,
        )
        loss = run_epoch(steps)
    assert torch.isfinite(torch.tensor(loss))
    changed = [k for k, v in gen.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed)
    if METHODS[method].adversary:
        assert any(k.startswith("adversary.") for k in changed)  # the adversary trains with the encoder
    feats, attention = gen(data.images[:5])
    assert feats.shape == (5, 2, cfg.model.feature_dim) and attention.shape == (5, 2, cfg.model.feature_dim)
    if METHODS[method].split == "shared":
        assert torch.equal(feats[:, 0], feats[:, 1])
    else:
        assert not torch.equal(feats[:, 0], feats[:, 1])
    assert method_plan(cfg, method).feature_dp.enabled == METHODS[method].feature_noise


def test_gradient_reversal_flips_the_sign():
    x = torch.randn(4, 3, requires_grad=True)
    (reverse_gradient(x, 0.5) * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.0))


@pytest.mark.parametrize("objective", ["reverse", "entropy"])
def test_adversary_loss_is_per_sample(objective):
    """d loss_i / d x_j = 0 for i != j: the adversary is a legal DP-SGD loss term."""
    torch.manual_seed(0)
    adv = Adversary((6,), [3, 4], (1, 2, 2), hidden=8)
    labels = torch.stack([torch.randint(0, 3, (5,)), torch.randint(0, 4, (5,))], 1)
    inputs = torch.randn(5, 1, 2, 2)
    jac = torch.autograd.functional.jacobian(
        lambda f: adv.per_sample_loss(f, inputs, labels, objective), torch.randn(5, 2, 6)
    )
    off_diagonal = jac.abs().sum(dim=(2, 3)) * (1 - torch.eye(5))
    assert float(off_diagonal.max()) == 0.0


def test_the_entropy_adversary_learns_its_own_loss_and_pushes_the_encoder_towards_a_blind_guess():
    from opacus import GradSampleModule
    from torch.nn import functional as nnf

    torch.manual_seed(0)
    adv = Adversary((6,), [3, 4], (1, 2, 2), hidden=8)
    labels = torch.stack([torch.randint(0, 3, (5,)), torch.randint(0, 4, (5,))], 1)
    inputs, feats = torch.randn(5, 1, 2, 2), torch.randn(5, 2, 6, requires_grad=True)

    def own_loss(f):  # what the adversary alone should learn from: its losses on the features as given
        total = 0
        for t in range(2):
            x = f[:, t]
            total = total + nnf.mse_loss(adv.decoders[t](x), inputs.flatten(1), reduction="none").mean(1)
            total = total + nnf.cross_entropy(adv.probes[f"{t}_{1 - t}"](x), labels[:, 1 - t], reduction="none")
        return total

    # the adversary's per-sample gradients (Opacus hooks) hold its own loss only, not the encoder's push
    private = GradSampleModule(adv, loss_reduction="sum")  # its hooks sit on the adversary's layers
    adv.per_sample_loss(feats, inputs, labels, "entropy").sum().backward()
    got = {n: p.grad_sample.clone() for n, p in adv.named_parameters()}
    private.zero_grad(set_to_none=True)
    for p in adv.parameters():
        p.grad_sample = None
    own_loss(feats.detach()).sum().backward()
    for n, p in adv.named_parameters():
        assert torch.allclose(got[n], p.grad_sample, atol=1e-6), n
        assert torch.allclose(got[n].sum(0), p.grad, atol=1e-5), n

    # the encoder's gradient step brings the probes' guesses towards uniform and the decoder's towards blank
    @torch.no_grad()
    def blindness(f):
        probe = nnf.log_softmax(adv.probes["0_1"](f[:, 0]), 1)
        decoded = adv.decoders[0](f[:, 0])
        blank = adv.decoders[0](torch.zeros(1, 6))
        return float(-(probe.mean(1)).sum()), float(((decoded - blank) ** 2).sum())

    feats.grad = None
    adv.per_sample_loss(feats, inputs, labels, "entropy").sum().backward()
    before = blindness(feats.detach())
    after = blindness((feats - 0.05 * feats.grad).detach())
    assert after[0] < before[0] and after[1] < before[1]
    with pytest.raises(ValueError, match="reverse"):
        adv.per_sample_loss(feats, inputs, labels, "flip")


def test_cosine_penalty_is_per_sample_and_zero_for_orthogonal_features():
    from fl_metamorphosis.losses import per_sample_cosine

    orthogonal = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    parallel = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    assert float(per_sample_cosine(orthogonal)) == 0.0 and float(per_sample_cosine(parallel)) == pytest.approx(1.0)
    feats = torch.randn(4, 2, 5)
    jac = torch.autograd.functional.jacobian(per_sample_cosine, feats)
    assert float((jac.abs().sum(dim=(2, 3)) * (1 - torch.eye(4))).max()) == 0.0
    objective = Objective("per_sample", 1.0, per_sample_penalty="cosine")
    with pytest.raises(ValueError, match="features"):
        objective.from_outputs(torch.nn.ModuleList(), [], torch.ones(1, 2, 2), torch.zeros(1, 2, dtype=torch.long))


def test_the_method_plan_answers_once_what_the_method_releases_adds_and_how_dp_sgd_clips():
    cfg = build_config(None, ['methods=["universal", "nopeek"]'])
    plan = method_plan(cfg)  # the config's last method: the one a federated run trains
    assert plan.name == "nopeek" and plan.objective.form == "batch" and plan.grouped
    assert not plan.feature_dp.enabled  # nopeek releases raw features
    assert not method_plan(build_config(None, ['methods=["nopeek"]', "dp_sgd.enabled=false"])).grouped  # no DP-SGD
    metamorphosis = method_plan(cfg, "metamorphosis")
    assert metamorphosis.feature_dp == cfg.feature_dp and not metamorphosis.grouped
