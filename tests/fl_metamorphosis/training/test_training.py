import torch

from fl_metamorphosis.config import RandomnessConfig, build_config
from fl_metamorphosis.training.trainer import train_method


def test_training_is_reproducible_only_when_seeded(tiny_cfg, tiny_split):
    one_epoch = {"train": tiny_cfg.train.model_copy(update={"epochs": 1})}
    cfg = tiny_cfg.model_copy(update={**one_epoch, "randomness": RandomnessConfig(source="seeded")})
    a = train_method("metamorphosis", tiny_split, cfg)
    b = train_method("metamorphosis", tiny_split, cfg)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    for (k, va), vb in zip(a.generator.state_dict().items(), b.generator.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    # the default draws its noise and batches from the OS: the same config trains a different model
    secret = train_method("metamorphosis", tiny_split, tiny_cfg.model_copy(update=one_epoch))
    assert not all(
        torch.equal(va, vb)
        for va, vb in zip(a.generator.state_dict().values(), secret.generator.state_dict().values(), strict=True)
    )
    # the returned generator carries no Opacus prefix or hooks: it can be saved and reloaded as is
    assert not any(k.startswith("_module") for k in a.generator.state_dict())
    assert a.dp_sgd["enabled"] and a.dp_sgd["steps"] > 0


def test_training_without_dp_reports_no_epsilon(tiny_split):
    cfg = build_config(None, ["dp_sgd.enabled=false", "train.epochs=1", "train.batch_size=64"])
    model = train_method("universal", tiny_split, cfg)
    assert model.dp_sgd == {"enabled": False, "epsilon": None, "delta": None}
    assert "epsilon" not in model.history[0]


def test_released_features_do_not_depend_on_the_forward_batch(tiny_cfg, tiny_split):
    """FORWARD_BATCH is a speed setting: seeded releases of the same images are the same at the batch size
    used before it (1,024) and at others of that order (at a handful of images, torch's kernels may round
    differently)."""
    from fl_metamorphosis.methods import method_plan
    from fl_metamorphosis.training.inference import FORWARD_BATCH, released_features
    from fl_metamorphosis.training.local_round import build_generator

    generator = build_generator(tiny_cfg, tiny_split.train)
    images = tiny_split.train.images[:601]  # batches that do not divide it, and a short last one
    feature_dp = method_plan(tiny_cfg).feature_dp
    ours = released_features(generator, images, feature_dp, 3)
    for batch in (1024, 512, 100):
        assert torch.equal(released_features(generator, images, feature_dp, 3, batch_size=batch), ours), batch
    assert FORWARD_BATCH < len(images)
