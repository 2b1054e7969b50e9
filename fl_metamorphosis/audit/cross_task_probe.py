"""Cross-task attack: can task t's released features predict task s?

For every ordered pair (t, s), a fresh probe (standardised inputs, then an MLP or a logistic regression,
scikit-learn) learns task s's labels from task t's released features on the attacker's data and is
scored on held-out data. Standardising matters: a feature the method merely shrank (small attention
weights) is rescaled back by the attacker. Chance is the best label-blind guess on the held-out labels.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .budget import epochs_within

MLP_BATCH = 200  # scikit-learn's own default (min(200, n))


def chance_level(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels))


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    kind: str = "mlp",
    hidden: int = 256,
    max_iter: int = 60,
    seed: int = 0,
    max_steps: int | None = None,
) -> float:
    """Held-out accuracy of a probe trained on ``(train_x, train_y)``: an MLP for ``max_iter`` epochs
    (fewer when that would exceed ``max_steps`` minibatches), or a logistic regression."""
    if kind == "mlp":
        epochs = epochs_within(len(train_x), MLP_BATCH, max_iter, max_steps)
        clf = MLPClassifier(
            hidden_layer_sizes=(hidden,),
            max_iter=epochs,
            batch_size=min(MLP_BATCH, len(train_x)),
            random_state=seed,
            alpha=1e-4,
        )
    elif kind == "linear":
        clf = LogisticRegression(max_iter=max_iter * 10)
    else:
        raise ValueError(f"probe kind must be 'mlp' or 'linear', got {kind!r}")
    model = make_pipeline(StandardScaler(), clf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x.reshape(len(train_x), -1), train_y)
    return float((model.predict(test_x.reshape(len(test_x), -1)) == test_y).mean())


def cross_task_attacks(
    attacker_features: np.ndarray,
    attacker_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    task_names: list[str],
    kind: str = "mlp",
    hidden: int = 256,
    max_iter: int = 60,
    seed: int = 0,
    max_steps: int | None = None,
) -> dict[str, dict[str, float | str]]:
    """``{"t->s": {accuracy, chance, probe}}`` for every ordered pair of distinct tasks."""
    results: dict[str, dict[str, float | str]] = {}
    for t, name_t in enumerate(task_names):
        for s, name_s in enumerate(task_names):
            if s == t:
                continue
            acc = probe_accuracy(
                attacker_features[:, t],
                attacker_labels[:, s],
                eval_features[:, t],
                eval_labels[:, s],
                kind,
                hidden,
                max_iter,
                seed,
                max_steps,
            )
            results[f"{name_t}->{name_s}"] = {"accuracy": acc, "chance": chance_level(eval_labels[:, s]), "probe": kind}
    return results
