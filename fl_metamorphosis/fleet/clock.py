"""The simulated clock of a fleet: who is available, how long each device takes, who drops or is late.

Devices are slots ``0..population-1``. A slot's class is fixed for the run: the classes' shares are
met exactly (largest remainder) and the slots are shuffled by the fleet's seed. Every per-round draw
(availability, dropout) comes from a generator keyed by (seed, what, round), so a resumed run draws
what the uninterrupted run would have, and no state beyond the round number is kept.

A device's simulated time for a piece of work is download + compute + upload:
``bytes_down * 8 / downlink + pairs * ms_per_pair / speed / 1000 + bytes_up * 8 / uplink``.
A train phase ends at ``deadline_s``, or earlier when ``target_replies`` replies have arrived (or
every device that will answer has). A device that drops out trained (its reply is lost on the way), so
it never arrives; one that arrives after the phase ended is a straggler and its update is discarded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .fleet_config import DeviceClass, FleetConfig

Outcome = Literal["arrived", "dropped", "straggler"]


@dataclass(frozen=True)
class Work:
    """One device's part of a phase: the pairs it processes and the bytes it receives and sends."""

    slot: int
    pairs: int
    bytes_down: int
    bytes_up: int


@dataclass(frozen=True)
class Arrival:
    slot: int
    seconds: float  # when its reply would reach the server, from the phase's start
    outcome: Outcome


@dataclass(frozen=True)
class TrainPhase:
    arrivals: list[Arrival]
    seconds: float  # how long the server waited

    def count(self, outcome: Outcome) -> int:
        return sum(a.outcome == outcome for a in self.arrivals)


def assign_classes(classes: list[DeviceClass], population: int, seed: int) -> np.ndarray:
    """Each slot's class index: shares met exactly (largest remainder), slots shuffled by ``seed``."""
    exact = np.array([c.share for c in classes]) * population
    counts = np.floor(exact).astype(int)
    short = population - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    labels = np.repeat(np.arange(len(classes)), counts)
    return np.random.default_rng([seed, 0]).permutation(labels)


def load_trace(path: Path) -> dict[tuple[int, int], bool]:
    """``device,round,available`` rows -> {(device, round): available}; a bad row is named by its line."""
    trace: dict[tuple[int, int], bool] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"device", "round", "available"} <= set(reader.fieldnames):
            raise ValueError(f"federated.fleet.trace {str(path)!r}: the header must name device,round,available")
        for line, row in enumerate(reader, start=2):
            try:
                device, rnd, available = int(row["device"]), int(row["round"]), int(row["available"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"federated.fleet.trace {str(path)!r} line {line}: device and round must be integers and "
                    f"available 0 or 1, got {dict(row)}"
                ) from None
            if available not in (0, 1) or device < 0 or rnd < 1:
                raise ValueError(
                    f"federated.fleet.trace {str(path)!r} line {line}: available must be 0 or 1, device >= 0 "
                    f"and round >= 1, got {dict(row)}"
                )
            trace[(device, rnd)] = bool(available)
    return trace


class Fleet:
    """The fleet model for a population of ``population`` devices."""

    def __init__(self, cfg: FleetConfig, population: int, round_memory_mb: float = 0.0) -> None:
        self.cfg, self.population = cfg, population
        self.classes = cfg.classes
        self.class_index = assign_classes(cfg.classes, population, cfg.seed)
        self.trace: dict[int, dict[int, bool]] = {}  # round -> {slot: available}, indexed once
        for (slot, rnd), up in (load_trace(Path(cfg.trace)) if cfg.trace else {}).items():
            if slot < population:
                self.trace.setdefault(rnd, {})[slot] = up
        self._availability = np.array([c.availability for c in cfg.classes])
        self._dropout = np.array([c.dropout for c in cfg.classes])
        # a device whose memory cannot hold a local round is never available
        self._fits = np.array([c.memory_mb >= round_memory_mb for c in cfg.classes])

    def device_class(self, slot: int) -> DeviceClass:
        return self.classes[int(self.class_index[slot])]

    def available(self, rnd: int) -> list[int]:
        """The slots available in round ``rnd``: the trace where it has the (slot, round), else a draw."""
        chance = self._availability[self.class_index]
        draw = np.random.default_rng([self.cfg.seed, 1, rnd]).random(self.population) < chance
        for slot, up in self.trace.get(rnd, {}).items():
            draw[slot] = up
        return np.flatnonzero(draw & self._fits[self.class_index]).tolist()

    def drops(self, rnd: int) -> np.ndarray:
        """Per slot: whether a device sampled in round ``rnd`` drops out mid-round."""
        return np.random.default_rng([self.cfg.seed, 2, rnd]).random(self.population) < self._dropout[self.class_index]

    def seconds(self, work: Work, ms_per_pair: float) -> float:
        c = self.device_class(work.slot)
        transfer = work.bytes_down * 8 / (c.downlink_mbps * 1e6) + work.bytes_up * 8 / (c.uplink_mbps * 1e6)
        return transfer + work.pairs * ms_per_pair / c.speed / 1000

    def train_phase(self, rnd: int, works: list[Work]) -> TrainPhase:
        """Who arrives, drops or straggles, and when the server stops waiting."""
        drops = self.drops(rnd)
        timed = sorted((self.seconds(w, self.cfg.train_ms_per_pair), w.slot) for w in works)
        survivors = [t for t, slot in timed if not drops[slot]]
        end = self.cfg.deadline_s
        k = self.cfg.target_replies
        if k is not None and len(survivors) >= k:
            end = min(end, survivors[k - 1])
        elif not any(drops[slot] for _, slot in timed) and survivors:
            end = min(end, survivors[-1])  # everyone answered: no reason to wait for the deadline
        arrivals = []
        for t, slot in timed:
            outcome: Outcome = "dropped" if drops[slot] else ("arrived" if t <= end else "straggler")
            arrivals.append(Arrival(slot, t, outcome))
        return TrainPhase(arrivals, end)

    def release_phase(self, works: list[Work]) -> float:
        """The feature query: the server waits for its slowest device."""
        return max((self.seconds(w, self.cfg.release_ms_per_pair) for w in works), default=0.0)
