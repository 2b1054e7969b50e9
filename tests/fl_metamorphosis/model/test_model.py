import pytest
import torch
from opacus.validators import ModuleValidator

from fl_metamorphosis.config import ModelConfig
from fl_metamorphosis.model import CrossSEC, FeatureGenerator, build_heads


@pytest.mark.parametrize("feature_map", [False, True])
def test_metamorphosis_shapes(feature_map):
    cfg = ModelConfig(feature_dim=32, feature_map=feature_map)
    gen = FeatureGenerator("metamorphosis", (1, 8, 16), num_tasks=3, cfg=cfg)
    feats, att = gen(torch.rand(5, 1, 8, 16))
    expected = (5, 3, 32) if not feature_map else (5, 3, 32, 4, 8)
    assert feats.shape == expected and att.shape == (5, 3, 32)
    heads = build_heads(gen.feature_shape, [10, 4, 2], cfg)
    assert [heads[t](feats[:, t]).shape for t in range(3)] == [(5, 10), (5, 4), (5, 2)]


def test_cross_sec_tasks_compete_for_channels():
    sec = CrossSEC(channels=16, num_tasks=2)
    f = torch.randn(7, 16)
    task_feats, att = sec(f)
    assert torch.all(att >= 0)
    assert torch.all(att.sum(1) < 1)  # the "none" option keeps a share of every channel
    assert torch.allclose(task_feats, att * f.unsqueeze(1))


def test_cross_sec_attention_depends_on_the_input():
    sec = CrossSEC(channels=16, num_tasks=2)
    a1, a2 = sec.attention(torch.randn(1, 16)), sec.attention(torch.randn(1, 16))
    assert not torch.allclose(a1, a2)


def test_universal_gives_every_task_the_same_feature():
    gen = FeatureGenerator("universal", (1, 8, 16), num_tasks=2, cfg=ModelConfig(feature_dim=16))
    feats, att = gen(torch.rand(4, 1, 8, 16))
    assert torch.equal(feats[:, 0], feats[:, 1]) and torch.all(att == 1)


@pytest.mark.parametrize("method", ["universal", "metamorphosis"])
def test_generator_is_opacus_compatible(method):
    gen = FeatureGenerator(method, (3, 16, 16), num_tasks=2, cfg=ModelConfig())
    assert ModuleValidator.validate(gen, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gen.modules())
