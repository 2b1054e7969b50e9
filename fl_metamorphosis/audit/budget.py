"""The attacker's compute budget: whole epochs, but no more minibatch steps than a cap.

A federated server receives more released features the longer the training runs, and the attacker is
given at least as many. Capping the steps keeps an audit's time flat in that number while the attacker
still learns from every row (``benchmarks/audit_budget.py`` measures what the cap costs the attacks).
"""

from __future__ import annotations

import math


def epochs_within(rows: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """``epochs`` passes over ``rows``, fewer (at least one) when they would take over ``max_steps`` steps."""
    if max_steps is None:
        return epochs
    steps_per_epoch = math.ceil(rows / min(batch_size, rows))
    return max(1, min(epochs, max_steps // steps_per_epoch))
