"""A device's per-pair release counts: how often each of its pairs has left the device, and which go next.

Each features query releases a sample of the device's pairs. A pair released k times composes k
Gaussian mechanisms per task (``feature_noise.account_release``), and whoever can link its k copies
averages them into one release with sqrt(k) less noise. So the device keeps a count per pair and:

* releases the least-released pairs first (random among equals), which keeps the most-released pair's
  count, the one the privacy figure is about, as low as the number of releases allows;
* never releases a pair past ``max_releases_per_pair``;
* spreads what the cap leaves over the queries it still expects, so that later rounds (whose heads need
  the current encoder's features) are not starved by earlier ones.

The ledger is the device's record, saved through ``state_dict`` with the rest of its privacy state; the
server only receives the largest count, as a cross-check of what it was sent.
"""

from __future__ import annotations

import math

import torch


class ReleaseLedger:
    def __init__(self, num_pairs: int):
        self.counts = torch.zeros(num_pairs, dtype=torch.int64)
        self.queries = 0  # features queries answered

    @property
    def max_releases(self) -> int:
        return int(self.counts.max()) if len(self.counts) else 0

    @property
    def total_releases(self) -> int:
        return int(self.counts.sum())

    def choose(self, requested: int, queries_left: int, cap: int | None, generator: torch.Generator) -> torch.Tensor:
        """Indices of the pairs to release now (least released first, none past ``cap``), at most
        ``requested`` and at most the capacity left divided evenly over ``queries_left`` queries."""
        n = min(requested, len(self.counts))
        if cap is not None:
            capacity = int((cap - self.counts).clamp(min=0).sum())
            n = min(n, math.ceil(capacity / max(1, queries_left)))
        if n <= 0:
            return torch.zeros(0, dtype=torch.int64)
        shuffled = torch.randperm(len(self.counts), generator=generator)
        order = shuffled[torch.argsort(self.counts[shuffled], stable=True)]  # fewest releases first
        chosen = order[:n]
        if cap is not None:
            chosen = chosen[self.counts[chosen] < cap]
        return chosen

    def record(self, released: torch.Tensor) -> None:
        self.counts[released] += 1
        self.queries += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts.clone(), "queries": torch.tensor(self.queries)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        counts = torch.as_tensor(state["counts"]).to(torch.int64)
        if counts.shape != self.counts.shape:
            raise ValueError(
                f"release ledger holds {len(counts)} pairs, this device has {len(self.counts)}: the device's data "
                "changed under its ledger; keep the data or start a new run"
            )
        self.counts = counts.clone()
        self.queries = int(state["queries"])
