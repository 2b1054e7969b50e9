import os
from pathlib import Path

import pytest
import torch

from fl_metamorphosis.config import build_config, preset_overrides
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.environment import CORES_ENV

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers side by side (pytest-xdist): each test, and every run and device it
    # starts, uses one thread per process. Two runs' OpenMP pools on two cores spin against each other: a
    # tiny audit's gradient-boosted probe took minutes that way.
    os.environ.setdefault(CORES_ENV, "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
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


def _scope(item: pytest.Item) -> str:
    return item.nodeid.rsplit("::", 1)[0]  # pytest-xdist's unit under --dist loadscope: a module (or class)


def _hinted_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 0)) if marker else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first. ``make test`` hands each module whole to one of two workers, in this order
    (pytest-xdist's loadscope): a module's fixtures are built once, and longest-first list scheduling ends
    both workers together instead of leaving a long run to finish alone. A module's length is the sum of its
    tests' ``slow(seconds=...)``; the other modules with slow tests come next, then the rest, each group in
    collection order (the sort is stable, and pytest collects a module's tests together)."""
    seconds: dict[str, float] = {}
    slow: set[str] = set()
    for item in items:
        scope = _scope(item)
        seconds[scope] = seconds.get(scope, 0.0) + _hinted_seconds(item)
        if item.get_closest_marker("slow"):
            slow.add(scope)
    items.sort(key=lambda item: (-seconds[_scope(item)], _scope(item) not in slow))


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory):
    """A tiny central MetaMorphosis run (no audit) and its export with int8 models: (run, export folder)."""
    from fl_metamorphosis.central import run_central
    from fl_metamorphosis.export import export_run

    root = tmp_path_factory.mktemp("export")
    cfg = build_config(None, [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "audit.enabled=false"])
    run_central(cfg, root / "run")
    export_run(root / "run", root / "export", quantize="int8")
    return root / "run", root / "export"
