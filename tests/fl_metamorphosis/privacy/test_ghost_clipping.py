"""Ghost clipping (privacy/ghost_clipping.py) against per-sample references and Opacus' hooks."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from fl_metamorphosis.config import DPSGDConfig, ModelConfig
from fl_metamorphosis.model import FeatureGenerator, build_heads
from fl_metamorphosis.privacy import make_private
from fl_metamorphosis.privacy.ghost_clipping import GhostNorms
from fl_metamorphosis.privacy.randomness import Randomness


def _per_sample_loss(gen, heads, x, y):
    feats, attention = gen(x)
    loss = sum(
        torch.nn.functional.cross_entropy(h(feats[:, t]), y[:, t], reduction="none") for t, h in enumerate(heads)
    )
    adversary = getattr(gen, "_module", gen).adversary  # through Opacus' wrapper too
    if adversary is not None:
        loss = loss + adversary.per_sample_loss(feats, x, y)
    return loss + attention.pow(2).sum((1, 2))


def _model(method: str, split, feature_map: bool = False):
    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=16, feature_map=feature_map, channels=[4, 8])
    num_classes = [t.num_classes for t in split.train.tasks]
    gen = FeatureGenerator(method, split.train.image_shape, 2, cfg, num_classes)
    heads = build_heads(gen.feature_shape, num_classes, cfg).requires_grad_(False)
    return gen, heads


@pytest.mark.parametrize(
    ("method", "feature_map"),
    [
        ("metamorphosis", False),
        ("metamorphosis", True),
        ("adversarial", False),
        ("metamorphosis_no_crosssec", True),
        ("universal", False),
    ],
)
def test_ghost_norms_equal_per_sample_gradient_norms(tiny_split, method, feature_map):
    gen, heads = _model(method, tiny_split, feature_map)
    x, y = tiny_split.train.images[:12], tiny_split.train.labels[:12]
    reference = []
    for i in range(len(x)):
        gen.zero_grad(set_to_none=True)
        _per_sample_loss(gen, heads, x[i : i + 1], y[i : i + 1]).sum().backward()
        reference.append(sum(float(p.grad.pow(2).sum()) for p in gen.parameters() if p.grad is not None))
    norms = GhostNorms(gen)
    gen.train()
    squared = norms.squared_norms(_per_sample_loss(gen, heads, x, y))
    assert squared.tolist() == pytest.approx(reference, rel=1e-4)


def _one_private_step(mode: str, split, seed: int):
    gen, heads = _model("metamorphosis", split)
    opt = torch.optim.SGD(gen.parameters(), lr=1.0)
    loader = DataLoader(split.train, batch_size=40)
    cfg = DPSGDConfig(target_epsilon=None, noise_multiplier=0.7, max_grad_norm=0.05, grad_sample_mode=mode)
    private = make_private(gen, opt, loader, cfg, 1, randomness=Randomness.seeded(seed))
    before = {k: v.clone() for k, v in gen.named_parameters()}
    x, y = next(iter(private.loader))
    private.optimizer.zero_grad(set_to_none=True)
    private.backward(_per_sample_loss(private.module, heads, x, y))
    private.optimizer.step()
    return {k: before[k] - p.detach() for k, p in gen.named_parameters()}, private, len(x)


def test_ghost_step_equals_the_opacus_hooks_step(tiny_split):
    """Same batch (same seeded Poisson draw), same noise draws: the two clipped, noised steps agree."""
    ghost, ghost_private, batch = _one_private_step("ghost", tiny_split, 3)
    hooks, hooks_private, batch_hooks = _one_private_step("hooks", tiny_split, 3)
    assert batch == batch_hooks > 0
    for name in hooks:
        assert torch.allclose(ghost[name], hooks[name], atol=1e-6, rtol=1e-4), name
    assert ghost_private.history.entries == hooks_private.history.entries  # one step, same sigma and q
    assert ghost_private.epsilon() == pytest.approx(hooks_private.epsilon())


def test_ghost_step_is_clipped_and_noised(tiny_split):
    """Without noise the update is at most the clip norm per sample; with noise it is not the clipped sum."""
    gen, heads = _model("metamorphosis", tiny_split)
    opt = torch.optim.SGD(gen.parameters(), lr=1.0)
    cfg = DPSGDConfig(target_epsilon=None, noise_multiplier=1e-9, max_grad_norm=0.01)
    private = make_private(
        gen, opt, DataLoader(tiny_split.train, batch_size=30), cfg, 1, randomness=Randomness.secret()
    )
    x, y = next(iter(private.loader))
    before = [p.detach().clone() for p in gen.parameters()]
    private.optimizer.zero_grad(set_to_none=True)
    private.backward(_per_sample_loss(gen, heads, x, y))
    summed = torch.sqrt(sum(p.grad.pow(2).sum() for p in gen.parameters()))
    assert float(summed) <= 0.01 * len(x) * (1 + 1e-4)  # each sample's contribution clipped to 0.01
    private.optimizer.step()
    moved = torch.sqrt(sum((b - p.detach()).pow(2).sum() for b, p in zip(before, gen.parameters(), strict=True)))
    expected = private.optimizer.expected_batch_size
    assert float(moved) == pytest.approx(float(summed) / expected, rel=1e-3)  # noise ~0, lr 1, mean over batch


def test_a_step_without_the_private_backward_is_refused(tiny_split):
    """A plain ``loss.backward()`` leaves an unclipped gradient: stepping on it would void the guarantee."""
    gen, heads = _model("metamorphosis", tiny_split)
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    cfg = DPSGDConfig()
    private = make_private(
        gen, opt, DataLoader(tiny_split.train, batch_size=30), cfg, 1, randomness=Randomness.secret()
    )
    x, y = next(iter(private.loader))
    _per_sample_loss(gen, heads, x, y).mean().backward()
    with pytest.raises(RuntimeError, match="PrivateTraining.backward"):
        private.optimizer.step()


def test_an_empty_poisson_batch_takes_a_noise_only_step(tiny_split):
    gen, heads = _model("metamorphosis", tiny_split)
    opt = torch.optim.SGD(gen.parameters(), lr=1.0)
    private = make_private(
        gen, opt, DataLoader(tiny_split.train, batch_size=30), DPSGDConfig(), 1, randomness=Randomness.secret()
    )
    x, y = tiny_split.train.images[:0], tiny_split.train.labels[:0]
    before = [p.detach().clone() for p in gen.parameters()]
    private.optimizer.zero_grad(set_to_none=True)
    private.backward(_per_sample_loss(gen, heads, x, y))
    private.optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, gen.parameters(), strict=True))  # noise moved each
    assert private.history.steps == 1


def test_a_layer_ghost_clipping_does_not_cover_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    with pytest.raises(ValueError, match="grad_sample_mode='hooks'"):
        GhostNorms(copy.deepcopy(model))
