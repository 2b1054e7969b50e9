import pytest
from conftest import ROOT

from fl_metamorphosis.config import ConfigError, ExperimentConfig, build_config, load_config


def test_defaults_are_the_embedded_demo():
    cfg = build_config()
    assert cfg.data.name == "digits"
    assert cfg.methods == ["universal", "metamorphosis"]
    assert cfg.dp_sgd.enabled and cfg.dp_sgd.target_epsilon == 8.0 and cfg.dp_sgd.delta == 1e-5
    assert cfg.decorrelation_form() == "per_sample"  # DP-SGD on: the DP-safe form


def test_overrides_are_typed():
    cfg = build_config(
        None,
        [
            "train.epochs=3",
            "feature_dp.mechanism=laplace",
            "dp_sgd.target_epsilon=none",
            "dp_sgd.noise_multiplier=1.2",
            "model.channels=[8, 16]",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.feature_dp.mechanism == "laplace"
    assert cfg.dp_sgd.noise_multiplier == 1.2 and cfg.dp_sgd.target_epsilon is None
    assert cfg.model.channels == [8, 16]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.epochs=0", "train.epochs"),
        ("dp_sgd.delta=2", "dp_sgd.delta"),
        ("feature_dp.noise_std=-1", "feature_dp.noise_std"),
        ("data.name=imagenet", "data.name"),
        ("train.epoch=3", "train.epoch"),  # unknown key (typo)
        ("audit.ssim_kernel=6", "audit"),
        ("model.groups=3", "model"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        build_config(None, [override])
    assert field in str(err.value)


def test_unknown_key_says_so():
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({"trian": {"epochs": 1}})


def test_batch_decorrelation_rejected_under_dp_sgd():
    with pytest.raises(ConfigError, match="decorrelation_form"):
        build_config(None, ["loss.decorrelation_form=batch"])
    with pytest.raises(ConfigError, match="input_decorrelation_weight"):
        build_config(None, ["loss.input_decorrelation_weight=0.5"])
    cfg = build_config(None, ["loss.decorrelation_form=batch", "dp_sgd.enabled=false"])
    assert cfg.decorrelation_form() == "batch"


def test_exactly_one_noise_source():
    with pytest.raises(ConfigError, match="exactly one"):
        build_config(None, ["dp_sgd.noise_multiplier=1.0"])  # target_epsilon still set


def test_toml_file_and_override(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('name = "x"\n[train]\nepochs = 4\nseed = 7\n')
    cfg = load_config(path, ["train.seed=9"])
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.name, cfg.train.epochs, cfg.train.seed) == ("x", 4, 9)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.sub=value"):
        build_config(None, ["train.epochs"])


def test_shipped_demo_file_is_the_defaults():

    assert load_config(ROOT / "configs" / "demo.toml") == build_config()
