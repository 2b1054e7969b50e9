"""METAMORPHOSIS_CORES: the cores a run may use, and so the CPUs its Ray gets (no more device actors than
cores: each actor imports torch and the App once)."""

import pytest

from fl_metamorphosis.environment import CORES_ENV, cores_from_env
from simulations.warm_runtime import WarmRuntime


def test_the_cores_come_from_the_environment_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv(CORES_ENV, raising=False)
    assert cores_from_env() is None
    monkeypatch.setenv(CORES_ENV, "3")
    assert cores_from_env() == 3
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv(CORES_ENV, bad)
        with pytest.raises(ValueError, match=f"{CORES_ENV}=.*whole number of cores"):
            cores_from_env()


def test_a_warm_runtime_slot_gets_the_environments_cores_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.setenv(CORES_ENV, "1")
    assert WarmRuntime(tmp_path / "a", slots=1).cores == 1
    assert WarmRuntime(tmp_path / "b", slots=1, cores=2).cores == 2
    monkeypatch.delenv(CORES_ENV)
    assert WarmRuntime(tmp_path / "c", slots=1).cores >= 1
