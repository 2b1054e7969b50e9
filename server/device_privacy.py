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
from fl_metamorphosis.privacy.group_dp_sgd import pair_level

from .replies import SortedReplies


@dataclass
class PrivacyLedger:
    delta: float
    epsilons: dict[int, float] = field(default_factory=dict)  # device -> cumulative epsilon it reported
    accounting: dict[int, tuple[float, float, int, bool]] = field(default_factory=dict)  # sigma, q, steps, grouped
    rounds_trained: Counter = field(default_factory=Counter)  # device -> rounds its update was aggregated
    releases_max: dict[int, int] = field(default_factory=dict)  # device -> most releases of one of its pairs
    rows_received: int = 0  # released task-feature rows the server received, all devices and rounds

    def record_releases(self, device: int, releases_max: int, rows: int) -> None:
        """A features reply: the device's own count of its most-released pair, and the rows it sent."""
        self.releases_max[device] = max(self.releases_max.get(device, 0), releases_max)
        self.rows_received += rows

    @property
    def max_releases_per_pair(self) -> int:
        return max(self.releases_max.values(), default=0)

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
            sigma, q, steps, grouped = self.accounting.get(device, (0.0, 0.0, 0, False))
            if not steps:
                reference = 0.0
            elif grouped:  # accounted per group of pairs: the same group-privacy conversion, other accountant
                reference = pair_level(lambda d, s=sigma, r=q, n=steps: reference_epsilon(s, r, n, d), self.delta)
            else:
                reference = reference_epsilon(sigma, q, steps, self.delta)
            rows[str(device)] = {
                "rounds_trained": self.rounds_trained[device],
                "steps": steps,
                "noise_multiplier": sigma,
                "sample_rate": q,
                "clipping_unit": "group of pairs" if grouped else "pair",
                "epsilon": eps,
                "epsilon_dp_accounting": reference,
                "releases_per_pair_max": self.releases_max.get(device, 0),
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
