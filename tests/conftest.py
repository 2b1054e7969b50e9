import warnings

import pytest
import torch

from fl_metamorphosis.config import build_config
from fl_metamorphosis.data import load_dataset

warnings.filterwarnings("ignore", module="opacus")
torch.set_num_threads(2)


TINY_OVERRIDES = [
    "data.train_pairs=600",
    "data.test_pairs=200",
    "train.epochs=2",
    "train.batch_size=64",
    "audit.attacker_samples=300",
    "audit.eval_samples=150",
    "audit.decoder_epochs=3",
    "audit.probe_max_iter=10",
    "audit.dcor_samples=100",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """``--set`` items for a small, fast experiment on the embedded digits."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_cfg(tiny_overrides):
    return build_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def tiny_split(tiny_cfg):
    return load_dataset(tiny_cfg.data, tiny_cfg.train.seed)
