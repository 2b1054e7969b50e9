"""The release gate on features whose leak is known by construction (no training: fast and exact)."""

import torch
from torch import nn

from fl_metamorphosis.config import FeatureDPConfig, ReleaseGateConfig
from fl_metamorphosis.privacy.randomness import Randomness
from fl_metamorphosis.privacy.release_gate import release_gate

N, D, K = 1200, 16, 10


class Lookup(nn.Module):
    """A 'generator' whose task features for image i are row i of a fixed table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, images: torch.Tensor):
        idx = images.flatten(1)[:, 0].long()
        return self.table[idx], None


def _features(labels: torch.Tensor, leak: float, seed: int = 0) -> torch.Tensor:
    """Task t's feature: a code of its own label, plus ``leak`` times a code of the other task's label."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.nn.functional.normalize(torch.randn(2, K, D, generator=g), dim=-1)
    own = torch.stack([codes[t][labels[:, t]] for t in range(2)], dim=1)
    other = torch.stack([codes[1 - t][labels[:, 1 - t]] for t in range(2)], dim=1)
    return 0.5 * own + leak * other


def _gate(labels, table, **cfg):
    cfg.setdefault("noise_steps", [1.0])  # the probe at the configured noise only, unless a test raises it
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
    return release_gate(
        Lookup(table),
        images,
        labels,
        ["a", "b"],
        feature_dp=FeatureDPConfig(noise_std=0.1),
        cfg=ReleaseGateConfig(**cfg),
        randomness=Randomness.seeded(7),
    )


def _independent_labels(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, K, (N, 2), generator=torch.Generator().manual_seed(seed))


def test_features_that_carry_the_other_task_are_withheld_with_a_reason_and_no_figures():
    labels = _independent_labels()
    decisions = _gate(labels, _features(labels, leak=0.3))
    assert [d.withheld for d in decisions] == [True, True]
    probe = decisions[0].probes[0]
    assert probe.accuracy > probe.baseline + 0.3 and probe.leaks
    reason = decisions[0].reason
    assert "a's features read b" in reason and f"{probe.accuracy:.2f}" not in reason  # the decision, not the data


def test_features_of_the_own_task_only_are_released():
    labels = _independent_labels()
    decisions = _gate(labels, _features(labels, leak=0.0))
    assert [d.withheld for d in decisions] == [False, False]
    assert all(d.reason == "" for d in decisions)
    assert all(abs(p.accuracy - p.baseline) < 0.05 for d in decisions for p in d.probes)


def test_a_leak_inside_the_margin_is_released_and_the_same_leak_is_withheld_at_margin_zero():
    labels = _independent_labels()
    table = _features(labels, leak=0.04)  # a small leak: 2-4 points above chance for a linear probe
    wide = _gate(labels, table, margin=0.5)
    strict = _gate(labels, table, margin=0.0)
    assert not any(d.withheld for d in wide)
    excess = min(p.accuracy - p.baseline for d in strict for p in d.probes)
    assert 0.01 < excess < 0.05 and all(d.withheld for d in strict)


def test_correlated_tasks_are_judged_against_what_the_own_label_predicts():
    # task b copies task a: a feature of a alone reads b perfectly, and that is no leak beyond the label
    a = torch.randint(0, K, (N,), generator=torch.Generator().manual_seed(3))
    labels = torch.stack([a, a], dim=1)
    codes = torch.nn.functional.normalize(torch.randn(K, D, generator=torch.Generator().manual_seed(4)), dim=-1)
    table = torch.stack([codes[a], codes[a]], dim=1)
    decisions = _gate(labels, table)
    assert all(p.baseline > 0.95 for d in decisions for p in d.probes)
    assert not any(d.withheld for d in decisions)


def test_a_leak_that_more_noise_hides_is_released_at_the_first_step_that_passes():
    labels = _independent_labels()
    table = _features(labels, leak=0.04)  # read at the configured noise (above), not under 4x the noise
    decisions = _gate(labels, table, margin=0.0, noise_steps=[1.0, 4.0, 16.0])
    assert all(not d.withheld and d.noise_multiplier in (4.0, 16.0) for d in decisions)
    assert all(not p.leaks for d in decisions for p in d.probes)  # the probes at the step released


def test_a_leak_no_step_hides_is_withheld_naming_every_step():
    labels = _independent_labels()
    decisions = _gate(labels, _features(labels, leak=0.5), noise_steps=[1.0, 1.5])
    assert all(d.withheld and d.noise_multiplier is None for d in decisions)
    assert "at every noise step [1.0, 1.5]" in decisions[0].reason


def test_clean_features_are_released_at_the_configured_noise():
    labels = _independent_labels()
    decisions = _gate(labels, _features(labels, leak=0.0), noise_steps=[1.0, 2.0, 4.0])
    assert [d.noise_multiplier for d in decisions] == [1.0, 1.0]
