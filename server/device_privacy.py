"""Per-device privacy ledger: what each device reported, re-accounted independently on the server.

A device's epsilon comes from its own Opacus accountant. The server does not take it on trust: each
train reply also carries the device's noise multiplier, sample rate and cumulative steps, and the ledger
recomputes the epsilon of those steps with Google's dp-accounting (a second, independent RDP accountant).
The two must agree; the summary reports both and their largest relative difference.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fl_metamorphosis.privacy import reference_epsilon

from .replies import SortedReplies


@dataclass
class PrivacyLedger:
    delta: float
    epsilons: dict[int, float] = field(default_factory=dict)  # device -> cumulative epsilon it reported
    accounting: dict[int, tuple[float, float, int]] = field(default_factory=dict)  # sigma, q, steps
    rounds_trained: Counter = field(default_factory=Counter)  # device -> rounds its update was aggregated

    def record(self, replies: SortedReplies) -> None:
        self.epsilons.update(replies.epsilons)
        self.accounting.update(replies.accounting)
        self.rounds_trained.update(replies.trained)

    @property
    def max_epsilon(self) -> float:
        return max(self.epsilons.values(), default=0.0)

    @property
    def mean_epsilon(self) -> float:
        return sum(self.epsilons.values()) / max(1, len(self.epsilons))

    def devices(self) -> dict[str, dict[str, Any]]:
        rows = {}
        for device, eps in sorted(self.epsilons.items()):
            sigma, q, steps = self.accounting.get(device, (0.0, 0.0, 0))
            rows[str(device)] = {
                "rounds_trained": self.rounds_trained[device],
                "steps": steps,
                "noise_multiplier": sigma,
                "sample_rate": q,
                "epsilon": eps,
                "epsilon_dp_accounting": reference_epsilon(sigma, q, steps, self.delta) if steps else 0.0,
            }
        return rows

    def max_relative_difference(self, rows: dict[str, dict[str, Any]]) -> float | None:
        """Largest |reported - re-accounted| / re-accounted over devices that trained; None if none did."""
        diffs = [
            abs(r["epsilon"] - r["epsilon_dp_accounting"]) / r["epsilon_dp_accounting"]
            for r in rows.values()
            if r["steps"] and r["epsilon_dp_accounting"] > 0
        ]
        return max(diffs) if diffs else None
