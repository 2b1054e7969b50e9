"""Cross-task attack: can task t's released features predict task s?

For every ordered pair (t, s), fresh attackers of several families (scikit-learn: logistic regression,
an MLP, k-nearest neighbours, gradient boosting; inputs standardised) learn task s's labels from task
t's released features on the attacker's data and are scored on held-out data. Standardising matters: a
feature the method merely shrank (small attention weights) is rescaled back by the attacker.

The headline of a pair is its STRONGEST family: a privacy claim must hold against the best attacker one
can build, not against the one that happened to be run first. Beside it: an exact (Clopper-Pearson)
95 % interval, and a one-sided binomial test against chance, Bonferroni-corrected for having picked the
best of the families. Chance is the best label-blind guess on the held-out labels.

Beside chance, each pair reports its label floor: what task t's own label alone predicts of task s (the
most frequent s-label for each t-label, learned on the attacker's rows, scored held-out). A feature
that serves task t can always be read that far, so when the tasks are correlated (the synthetic set's
``synthetic_correlation``, attributes of one face) it is the floor to judge the attack against; for
independent tasks it equals chance.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import binomtest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..config import AuditConfig
from .budget import epochs_within

MLP_BATCH = 200  # scikit-learn's own default (min(200, n))


def chance_level(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels))


def label_floor(own: np.ndarray, other: np.ndarray, own_eval: np.ndarray, other_eval: np.ndarray) -> float:
    """Held-out accuracy of guessing the other task's label from this task's label alone."""
    k_own = int(max(own.max(), own_eval.max())) + 1
    table = np.zeros((k_own, int(max(other.max(), other_eval.max())) + 1))
    np.add.at(table, (own, other), 1)
    guess = np.where(table.sum(1) > 0, table.argmax(1), np.bincount(other).argmax())  # unseen label: majority
    return float((guess[own_eval] == other_eval).mean())


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    kind: str,
    cfg: AuditConfig,
    seed: int = 0,
) -> float:
    """Held-out accuracy of an attacker trained on ``(train_x, train_y)``: an MLP for ``cfg.probe_max_iter``
    epochs (fewer when that would exceed ``cfg.max_steps`` minibatches), a logistic regression, k-nearest
    neighbours or gradient boosting (these two on at most ``cfg.max_rows`` rows, a random sample: the
    auditor's own draw, nothing a device releases depends on it)."""
    if kind in ("knn", "boosting") and len(train_x) > cfg.max_rows:
        keep = np.random.default_rng(seed).choice(len(train_x), cfg.max_rows, replace=False)
        train_x, train_y = train_x[keep], train_y[keep]
    if kind == "mlp":
        epochs = epochs_within(len(train_x), MLP_BATCH, cfg.probe_max_iter, cfg.max_steps)
        clf = MLPClassifier(
            hidden_layer_sizes=(cfg.probe_hidden,),
            max_iter=epochs,
            batch_size=min(MLP_BATCH, len(train_x)),
            random_state=seed,
            alpha=1e-4,
        )
    elif kind == "linear":
        clf = LogisticRegression(max_iter=cfg.probe_max_iter * 10)
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=min(cfg.knn_neighbors, len(train_x)))
    elif kind == "boosting":
        clf = HistGradientBoostingClassifier(max_iter=cfg.boosting_max_iter, random_state=seed)
    else:
        raise ValueError(f"attacker kind must be one of linear, mlp, knn, boosting; got {kind!r}")
    model = make_pipeline(StandardScaler(), clf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x.reshape(len(train_x), -1), train_y)
    return float((model.predict(test_x.reshape(len(test_x), -1)) == test_y).mean())


def headline(accuracies: dict[str, float], test_y: np.ndarray) -> dict:
    """The strongest family's accuracy, its exact 95 % interval and its p-value against chance
    (one-sided binomial, Bonferroni over the families compared)."""
    best = max(accuracies, key=accuracies.get)
    n, chance = len(test_y), chance_level(test_y)
    correct = round(accuracies[best] * n)
    test = binomtest(correct, n, chance, alternative="greater")
    interval = binomtest(correct, n, chance).proportion_ci(confidence_level=0.95, method="exact")  # two-sided
    return {
        "accuracy": accuracies[best],
        "chance": chance,
        "attacker": best,
        "ci95": [float(interval.low), float(interval.high)],
        "p_value": float(min(1.0, test.pvalue * len(accuracies))),
        "families": accuracies,
    }


def cross_task_attacks(
    attacker_features: np.ndarray,
    attacker_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    task_names: list[str],
    cfg: AuditConfig,
    seed: int = 0,
) -> dict[str, dict]:
    """``{"t->s": headline(...)}`` for every ordered pair of distinct tasks, over ``cfg.attackers``."""
    results: dict[str, dict] = {}
    for t, name_t in enumerate(task_names):
        for s, name_s in enumerate(task_names):
            if s == t:
                continue
            x, y = attacker_features[:, t], attacker_labels[:, s]
            accuracies = {
                kind: probe_accuracy(x, y, eval_features[:, t], eval_labels[:, s], kind, cfg, seed)
                for kind in cfg.attackers
            }
            results[f"{name_t}->{name_s}"] = headline(accuracies, eval_labels[:, s]) | {
                "label_floor": label_floor(attacker_labels[:, t], y, eval_labels[:, t], eval_labels[:, s])
            }
    return results
