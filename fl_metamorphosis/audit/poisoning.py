"""Poisoned and faulty devices, to measure what a robust aggregation strategy buys (simulation only).

A share of the population misbehaves for the whole run. Which devices is fixed by the run's seed, so
the runs of a sweep that differ only in their strategy face the same attackers; the strategy is never
told. Each attack changes only what the device itself sends, after its DP-SGD training or in its own
data:

* ``sign_flip``: ``w_g - s (w - w_g)``: the device's update reversed and scaled by ``s`` (the
  sign-flipping attack of the Byzantine-robustness literature, e.g. Karimireddy et al. 2021);
* ``scale``: ``w_g + s (w - w_g)``: the update boosted by ``s`` (Bhagoji et al. 2019), so it
  outweighs the honest ones in a mean;
* ``gaussian``: ``w_g + N(0, sigma^2)`` per coordinate: a broken device that sends noise (Blanchard
  et al. 2017);
* ``label_flip``: the device trains and releases features on labels ``y -> C - 1 - y`` of every task
  (data poisoning, Tolpegin et al. 2020); what it sends is honest DP-SGD output of poisoned data;
* ``stale``: the device sends the weights it trained in its first round, every round (a device stuck on
  an old model).

None of this spends anyone's privacy: an attack is post-processing of the device's own DP-SGD output,
or a change to its own data before training, and the device accounts its training as any device does.
The server receives nothing a device could not send anyway, so its checks (fields, shapes, finite
values, the budget ledger) apply unchanged: a boosted update that overflows float32 is rejected as
non-finite, not aggregated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import read_checkpoint, write_checkpoint
from ..config import PoisoningConfig
from ..data import MultiTaskDataset

STALE_FILE = "stale_update.ckpt"


def malicious_devices(poisoning: PoisoningConfig, num_devices: int, seed: int) -> frozenset[int]:
    """The partition ids of the misbehaving devices: ``round(share * num_devices)`` of them, drawn with
    the run's seed (the same attackers for every strategy of a sweep)."""
    count = poisoning.count(num_devices)
    # Not privacy randomness: which devices play the attacker is part of the simulated experiment, known
    # to whoever configured it (the summary lists them); the attacks' own noise comes from the device.
    order = torch.randperm(num_devices, generator=torch.Generator().manual_seed(seed + 7_919))
    return frozenset(int(d) for d in order[:count])


def flip_labels(data: MultiTaskDataset) -> MultiTaskDataset:
    """``data`` with every task's label ``y`` replaced by ``C - 1 - y``."""
    classes = torch.tensor([t.num_classes for t in data.tasks])
    return MultiTaskDataset(data.images, classes - 1 - data.labels, data.tasks)


def poison_update(
    poisoning: PoisoningConfig,
    weights: dict[str, torch.Tensor],
    received: dict[str, torch.Tensor],
    generator: torch.Generator,
    state_dir: Path,
) -> dict[str, torch.Tensor]:
    """What a misbehaving device sends instead of its trained ``weights`` (``received``: the server's
    weights it trained from). ``label_flip`` poisons the data, not the update: ``weights`` unchanged."""
    attack = poisoning.attack
    if attack in ("none", "label_flip"):
        return weights
    if attack == "stale":
        file = Path(state_dir) / STALE_FILE
        if file.exists():
            return read_checkpoint(file, "device")["weights"]
        write_checkpoint(file, "device", {"weights": weights})
        return weights
    out = {}
    for name, w in weights.items():
        base = received[name].to(w.dtype)
        if not w.is_floating_point():  # counters (e.g. a norm layer's steps) are sent as trained
            out[name] = w
        elif attack == "sign_flip":
            out[name] = base - poisoning.sign_flip_scale * (w - base)
        elif attack == "scale":
            out[name] = base + poisoning.boost * (w - base)
        elif attack == "gaussian":
            out[name] = base + poisoning.noise_std * torch.randn(w.shape, generator=generator, dtype=w.dtype)
        else:
            raise ValueError(f"federated.poisoning.attack {attack!r} is not implemented")
    return out
