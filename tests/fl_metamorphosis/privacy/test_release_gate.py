"""The release gate on features whose leak is known by construction (no training: fast and exact)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from fl_metamorphosis.config import DataConfig, FeatureDPConfig, ReleaseGateConfig
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.data.reference import reference_pairs
from fl_metamorphosis.privacy.randomness import Randomness
from fl_metamorphosis.privacy.release_gate import cross_validated_hits, release_gate

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


def _images(rows: range) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.float32).view(-1, 1, 1, 1)


def _gate(labels, table, reference=None, **cfg):
    cfg.setdefault("noise_steps", [1.0])  # the probe at the configured noise only, unless a test raises it
    images = _images(range(len(labels)))
    return release_gate(
        Lookup(table),
        images,
        labels,
        ["a", "b"],
        feature_dp=FeatureDPConfig(noise_std=0.1),
        cfg=ReleaseGateConfig(**cfg),
        randomness=Randomness.seeded(7),
        reference=reference,
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


def test_a_leak_on_classes_the_device_does_not_hold_is_caught_on_the_public_reference():
    # the device holds classes 0-4 of each task; its features carry the other task's label only for
    # classes 5-9, as a model can leak where a skewed device has no data to see it
    g = torch.Generator().manual_seed(5)
    own = torch.randint(0, K // 2, (N, 2), generator=g)
    public = torch.randint(0, K, (N, 2), generator=g)
    labels = torch.cat([own, public])
    codes = torch.nn.functional.normalize(torch.randn(2, K, D, generator=g), dim=-1)
    seen = (labels >= K // 2).float()[:, [1, 0], None]  # the other task's label is carried only if 5-9
    table = torch.stack(
        [0.5 * codes[t][labels[:, t]] + 0.5 * seen[:, t] * codes[1 - t][labels[:, 1 - t]] for t in range(2)], 1
    )
    alone = _gate(own, table)
    assert not any(d.withheld for d in alone)  # its own pairs show nothing
    both = _gate(own, table, reference=(_images(range(N, 2 * N)), public))
    assert all(d.withheld for d in both)
    assert {p.pairs for d in both for p in d.probes if p.leaks} == {"reference"}


def test_the_reference_is_the_datasets_test_split_where_the_device_can_build_it(tmp_path):
    digits = DataConfig(train_pairs=200, test_pairs=300)
    own = load_dataset(digits, 0).train
    reference = reference_pairs(digits, 0, own, torch.Generator().manual_seed(1))
    assert reference is not None and len(reference) == 300 and reference.image_shape == own.image_shape
    again = reference_pairs(digits, 0, own, torch.Generator().manual_seed(2))
    assert not torch.equal(reference.images, again.images)  # the pairs are the device's draw, not the seed's
    synthetic = DataConfig(name="synthetic", train_pairs=50, test_pairs=50)
    assert reference_pairs(synthetic, 0, own, torch.Generator()) is None  # not alike
    missing = DataConfig(name="mnist_pairs", root=tmp_path / "absent")
    assert reference_pairs(missing, 0, own, torch.Generator()) is None  # files the device does not have


@pytest.mark.parametrize("seed", range(6))
def test_the_gates_closed_form_probe_scores_as_one_scikit_learn_pipeline_per_fold(seed):
    """The gate's probe fits every fold in closed form from sums of the other folds' rows: its held-out hits
    are those of scikit-learn's pipeline fit on each fold's training copies, on two and on many classes,
    with more dimensions than training rows, a constant and a nearly constant column, float32 rows off
    centre, a class that only one fold holds, and a training set of one class (the label-blind guess)."""
    rng = np.random.default_rng(seed)
    # classes, pairs, dims, noise copies, folds
    cases = [(2, 200, 64, 2, 4), (10, 2000, 64, 2, 4), (7, 90, 32, 3, 3), (7, 60, 128, 2, 4), (1, 60, 8, 1, 2)]
    for classes, pairs, dims, copies, folds in cases:
        fold = rng.permutation(pairs) % folds
        y = rng.integers(0, classes, pairs)
        y[(y == 0) & (fold != 0)] = classes - 1  # class 0 in fold 0 only: fold 0's fit never sees it
        means = rng.normal(size=(classes, dims)) * rng.uniform(0, 2)
        rows = (means[y] + rng.normal(size=(copies + 1, pairs, dims))).astype(np.float32)
        rows[..., 3] = 2.5
        rows[..., 4] = 1.0 + 1e-7 * rng.normal(size=rows.shape[:2])
        rows += np.float32(rng.uniform(-3, 3))
        expected = 0
        for k in range(folds):
            train, test = fold != k, fold == k
            x_train, y_train = np.concatenate(rows[1:, train]), np.tile(y[train], copies)
            if len(np.unique(y_train)) < 2:
                predicted = np.full(test.sum(), y_train[0])
            else:
                pipeline = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0)).fit(x_train, y_train)
                predicted = pipeline.predict(rows[0, test])
            expected += int((predicted == y[test]).sum())
        assert cross_validated_hits(rows[1:], rows[0], y, fold, folds) == expected
