"""The release gate: a device releases no task's features that its own probe can read another task from.

The weights a device releases under are the server's: early in training they leak (the tasks' channels
are not yet apart), and a lying server can send weights trained to leak. Before each release the device
therefore attacks itself, on its own pairs and under the weights it received:

* its pairs' task features are released as they would be (clip, and noise of the release's distribution),
  a few fresh-noise copies of each, since the server holds many rows. These copies never leave the
  device, so their noise comes from a fast secret-seeded generator (``Randomness.local_only``), not the
  cryptographic one a release needs against floating-point attacks on the values it sends;
* for every ordered pair of tasks (t, s), a cross-validated linear probe (a standardised ridge
  classifier: closed form, so a board can afford it every round; folds split by pair) reads task s's
  label from task t's released feature;
* its held-out accuracy is compared with the baseline: the better of chance (the most frequent s-label)
  and what task t's own label predicts of s (for correlated tasks a feature that serves t can always be
  read that far; the cross-task audit's label floor);
* task t fails when a one-sided binomial test says, with ``confidence``, that the probe beats the
  baseline by more than ``margin``;
* the same probes run on public reference pairs (the dataset's test split, ``data/reference.py``) released
  under the same weights, and task t fails if either set reads another task. A device whose labels are
  skewed sees few classes and a high chance level on its own pairs, and cannot see there what an attacker
  who learns from every device's releases reads (measured: docs/privacy.md, Dirichlet 0.3); the
  reference holds every class. The own-pairs probe stays, since the server knows the reference and could
  craft weights that behave on exactly those images;
* a task that fails is probed again with its noise raised to the next of ``noise_steps`` (multiples of
  the configured noise, never below it), and released at the first step that passes; a task that fails
  at every step is withheld. Withholding outright would starve the task's head on the server (it learns
  only from released rows), and a head that never learns leaves the encoder training that task against a
  random head, so the task keeps leaking and keeps being withheld; noisier rows still teach the head.

What the decision costs in privacy. The decision is a function of the device's private pairs, so it is a
release too. The device sends only the decision: for each task the noise step it was released at, or
that it was withheld with a fixed sentence naming the pair, never the probe's numbers. The server learns
at most log2(steps + 1) bits per task per query about the device's data taken as a whole (2 bits with
the default three steps), and no more than that from this mechanism over a run: 2 x 2 x 31 bits for the
demo's two tasks and 31 queries. This is a bound on information, not a differential-privacy guarantee:
the bit is deterministic given the data and the noise draws, and no epsilon is claimed for it. One pair
moves the statistic by its own held-out prediction (1/n) and through the probe it helped train, while the
feature noise and the secret folds move it by about sqrt(p(1-p)/n) between queries, so a server that
wanted one pair's membership from the bit would have to place the device's whole-data statistic on the
threshold to within about 1/n, blind. docs/privacy.md gives the measured detection power: how far above
the baseline a leak must be for the gate to see it on a device's data.

What the gate cannot see. A leak its probe cannot read: a non-linear one that the linear probe misses
but a stronger attacker with more rows finds, or one smaller than the margin plus the test's slack. The
per-round audit (``audit/round_audit.py``) measures what got through, with the strongest attackers.
Input reconstruction is not probed here (a decoder per release would cost a board more than the
training round): the audit measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg
from scipy.special import bdtrc  # binom.sf, without importing scipy.stats on every feature query
from torch import nn

from ..config import FeatureDPConfig, ReleaseGateConfig
from .feature_noise import release
from .randomness import Randomness


@dataclass(frozen=True)
class PairProbe:
    """The device's own probe of one ordered pair of tasks (kept on the device; never sent)."""

    source: str  # the task whose released feature the probe reads
    target: str  # the task whose label it predicts
    accuracy: float
    baseline: float  # the better of chance and the source task's own label
    p_value: float  # H0: accuracy <= baseline + margin
    leaks: bool
    pairs: str = "own"  # which pairs it probed: the device's own, or the public reference


@dataclass(frozen=True)
class GateDecision:
    task: str
    withheld: bool
    reason: str  # what the server is told: a fixed sentence, no figure computed from the device's data
    probes: tuple[PairProbe, ...]  # at the last noise step tried
    noise_multiplier: float | None = None  # the step it is released at (times feature_dp.noise_std); None: withheld


@torch.no_grad()
def _task_features(generator: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Task features before release, 256 images at a time (training/inference.py: FORWARD_BATCH, why)."""
    generator.eval()
    return torch.cat([generator(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)])


def cross_validated_hits(
    train_copies: np.ndarray, test_rows: np.ndarray, y: np.ndarray, fold: np.ndarray, folds: int, alpha: float = 1.0
) -> int:
    """Held-out hits of the gate's probe over ``folds`` folds: for each fold, scikit-learn's
    ``make_pipeline(StandardScaler(), RidgeClassifier(alpha))`` fit on the copies of every other fold's pairs
    (``train_copies[j, i]``, labelled ``y[i]``) and scored on ``test_rows`` of the fold's own pairs.

    In closed form, from sums. The gate runs 16 to 48 of these fits per release on every device, and at that
    size scikit-learn's checks of its inputs took most of each fit (docs/federated.md). The standardised
    rows are never formed: their Gram matrix and right-hand side are the centred rows' scaled by the columns'
    scales, and the coefficients are scaled back instead. Each fold's rows enter its Gram matrix, sum and
    per-class sums once, and fold k's fit takes the totals less fold k's own, so the rows are multiplied
    once rather than ``folds - 1`` times. The rows are shifted by one of them first (exact for a constant
    column), so centring by the train mean subtracts a correction of the rows' own spread instead of
    cancelling large sums. A fit whose training folds hold one class only is the label-blind guess of that
    class. ``tests/fl_metamorphosis/privacy/test_release_gate.py`` holds the hits to scikit-learn's."""
    copies, dims = len(train_copies), train_copies.shape[-1]
    order = np.argsort(fold, kind="stable")  # each fold's pairs side by side, every copy of a pair in a row
    z = train_copies.transpose(1, 0, 2)[order].astype(np.float64)  # [n, copies, dims]
    shift = z[0, 0].copy()
    z -= shift
    classes, index = np.unique(y, return_inverse=True)
    onehot = np.repeat(np.eye(len(classes))[index[order]], copies, axis=0)  # [n * copies, classes]
    bounds = np.searchsorted(fold[order], np.arange(folds + 1)) * copies
    z = z.reshape(-1, dims)
    gram, total, by_class, count = [], [], [], []
    for k in range(folds):
        rows, hot = z[bounds[k] : bounds[k + 1]], onehot[bounds[k] : bounds[k + 1]]
        gram.append(rows.T @ rows)
        total.append(rows.sum(0))
        by_class.append(hot.T @ rows)
        count.append(hot.sum(0))
    hits = 0
    for k in range(folds):
        test = fold == k
        g, s, c, m = (sum(a) - a[k] for a in (gram, total, by_class, count))
        present = m > 0
        if present.sum() < 2:  # one class only: the probe is the label-blind guess
            hits += int((y[test] == classes[present][0]).sum())
            continue
        n = m.sum()
        delta = s / n  # the training rows' mean, less the shift
        centred = g - n * np.outer(delta, delta)
        var, eps, mean = np.diag(centred) / n, np.finfo(np.float64).eps, shift + delta
        scale = np.sqrt(var)
        scale[var <= n * eps * var + (n * mean * eps) ** 2] = 1.0  # StandardScaler's constant-column test
        # RidgeClassifier's {-1, 1} targets: sum_i (z_i - delta) t_iq = 2 (c_q - m_q delta); their mean (2 m_q - n) / n
        rhs, target_mean = 2.0 * (c[present] - m[present, None] * delta), (2.0 * m[present] - n) / n
        if present.sum() == 2:  # two classes: one column, the second class's
            rhs, target_mean = rhs[1:], target_mean[1:]
        lhs = centred / np.outer(scale, scale)
        lhs.flat[:: dims + 1] += alpha
        coef = linalg.solve(lhs, rhs.T / scale[:, None], assume_a="pos")
        scores = (test_rows[test] - mean) @ (coef / scale[:, None]) + target_mean
        picked = (scores[:, 0] > 0).astype(int) if present.sum() == 2 else scores.argmax(1)
        hits += int((classes[present][picked] == y[test]).sum())
    return hits


def _baseline_correct(own_train: np.ndarray, other_train: np.ndarray, own_test: np.ndarray, other_test: np.ndarray):
    """Held-out hits of the better label-blind guess: the most frequent label, or the most frequent label
    given the source task's own label."""
    majority = np.bincount(other_train).argmax()
    table = np.zeros((int(max(own_train.max(), own_test.max())) + 1, int(other_train.max()) + 1))
    np.add.at(table, (own_train, other_train), 1)
    given_own = np.where(table.sum(1) > 0, table.argmax(1), majority)
    return max(int((other_test == majority).sum()), int((given_own[own_test] == other_test).sum()))


@dataclass(frozen=True)
class _ProbeSet:
    """Pairs the gate probes (the device's own, or public reference pairs), their features and folds."""

    name: str  # "own" or "reference"
    features: torch.Tensor  # the task features before release [n, T, ...]
    labels: np.ndarray  # [n, T]
    fold: np.ndarray  # [n], the secret cross-validation fold of each pair
    baselines: dict[tuple[int, int], float]  # (t, s) -> the baseline's held-out accuracy, whatever the noise

    @classmethod
    def draw(cls, name, generator, images, labels, cfg: ReleaseGateConfig, randomness: Randomness) -> _ProbeSet:
        n = min(len(images), cfg.probe_pairs)
        chosen = torch.randperm(len(images), generator=randomness.generator())[:n]
        fold = (torch.randperm(n, generator=randomness.generator()) % cfg.folds).numpy()
        y, tasks = labels[chosen].numpy(), labels.shape[1]
        baselines = {}
        for t, s in ((t, s) for t in range(tasks) for s in range(tasks) if s != t):
            hits = 0
            for k in range(cfg.folds):
                train, test = fold != k, fold == k
                hits += _baseline_correct(y[train, t], y[train, s], y[test, t], y[test, s])
            baselines[t, s] = hits / n
        return cls(name, _task_features(generator, images[chosen]), y, fold, baselines)


def release_gate(
    generator: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    task_names: list[str],
    *,
    feature_dp: FeatureDPConfig,
    cfg: ReleaseGateConfig,
    randomness: Randomness,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[GateDecision]:
    """One decision per task: release it at a noise step, or withhold it this round.

    Args:
        generator: the feature generator under the weights the device received (encoder + Cross-SEC).
        images: the device's training pairs' images ``[N, C, H, W]``.
        labels: their labels ``[N, T]``, one column per task.
        task_names: the tasks, in the columns' order.
        feature_dp: the release mechanism the device would apply (clip and noise).
        cfg: the gate's margin, confidence, sample size, folds, noise copies and noise steps.
        randomness: the device's secret randomness (the probe's pairs, folds and noise: ``local_only``).
        reference: public reference pairs ``(images, labels)`` probed as well (``data/reference.py``): a
            task passes a step only if neither its own pairs nor the reference read another task.
    """
    sets = [_ProbeSet.draw("own", generator, images, labels, cfg, randomness)]
    if reference is not None:
        sets.append(_ProbeSet.draw("reference", generator, *reference, cfg, randomness))
    steps = cfg.noise_steps if feature_dp.enabled else cfg.noise_steps[:1]  # no noise to raise without feature DP
    rehearsal = randomness.local_only()
    pending, decided = list(range(len(task_names))), {}
    for step in steps:
        noised = feature_dp.model_copy(update={"noise_std": feature_dp.noise_std * step})
        # copy 0 is what the probe is scored on; the others are what it learns from
        copies = [[release(p.features, noised, rehearsal).flatten(2).numpy() for _ in range(cfg.noise_copies + 1)]
                  for p in sets]  # fmt: skip
        for t in list(pending):
            probes = tuple(
                _probe(c, p, t, s, task_names, cfg)
                for p, c in zip(sets, copies, strict=True)
                for s in range(len(task_names))
                if s != t
            )
            if not any(p.leaks for p in probes):
                decided[t] = GateDecision(task_names[t], False, "", probes, step)
                pending.remove(t)
            elif step == steps[-1]:
                leaking = ", ".join(sorted({p.target for p in probes if p.leaks}))
                reason = (
                    f"release gate: {task_names[t]}'s features read {leaking} above the baseline by more than the "
                    f"margin {cfg.margin} (confidence {cfg.confidence}) under the weights received, at every noise "
                    f"step {steps}"
                )
                decided[t] = GateDecision(task_names[t], True, reason, probes)
        if not pending:
            break
    return [decided[t] for t in range(len(task_names))]


def _probe(copies, pairs: _ProbeSet, t: int, s: int, task_names: list[str], cfg: ReleaseGateConfig) -> PairProbe:
    """Task t's released features against task s's label, cross-validated by pair, with its test."""
    y, fold, n = pairs.labels, pairs.fold, len(pairs.labels)
    train_copies = np.stack([c[:, t] for c in copies[1:]])
    correct = cross_validated_hits(train_copies, copies[0][:, t], y[:, s], fold, cfg.folds)
    baseline = pairs.baselines[t, s]
    threshold = min(1.0, baseline + cfg.margin)
    p_value = float(bdtrc(correct - 1, n, threshold))  # P(X >= correct) if the leak were the margin
    leaks = p_value < 1 - cfg.confidence
    return PairProbe(task_names[t], task_names[s], correct / n, baseline, p_value, leaks, pairs.name)
