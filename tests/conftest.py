from pathlib import Path

import pytest
import torch

from fl_metamorphosis.config import build_config, preset_overrides
from fl_metamorphosis.data import load_dataset

torch.set_num_threads(2)


ROOT = Path(__file__).resolve().parents[1]
TINY_PRESET = ROOT / "configs" / "tiny.toml"  # the one tiny preset (also `compare --quick`)
TINY_OVERRIDES = preset_overrides(TINY_PRESET)


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """``--set`` items of configs/tiny.toml: a small, fast experiment (and federation) on the embedded digits."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_cfg(tiny_overrides):
    return build_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def tiny_split(tiny_cfg):
    return load_dataset(tiny_cfg.data, tiny_cfg.train.seed)


def operator_policy_file(folder, cfg) -> str:
    """A policy file that is the operator's own config (what a simulated device uses): tests about other
    behaviour than the policy run devices that accept exactly their config."""
    from fl_metamorphosis.privacy.device_policy import DevicePolicy

    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "policy.json"
    DevicePolicy.from_config(cfg).save(path)
    return str(path)
