"""Privacy accounting in one place: step histories, epsilon from them, group privacy, noise calibration,
a device's budget plan and the server's ledger of every device.

An Opacus accountant's whole state is its history: ``(noise multiplier, sample rate, steps)`` entries.
``StepHistory`` is that history as a value; it goes into and out of Opacus accountants through their
``state_dict`` API only. Epsilon is read from Opacus' accountant (RDP by default) and cross-checked with
Google's dp-accounting, a second, independent RDP implementation.

Group privacy. Methods whose loss is a batch statistic clip per group of pairs (``group_dp_sgd.py``).
Adding or removing one pair CHANGES one group, a distance of 2 at the group level; a group-level
(e, d) guarantee then gives (2e, 2 exp(e) d) for one pair. ``group_privacy`` is that conversion, used
by the device, the server's re-count and the central trainer alike.

The server's ledger (``ServerLedger``) keeps what each device reported AND its own count of the steps
it saw each device take. A device whose own state was lost (deleted, reset) reports fewer steps than the
server counted; the ledger then takes the larger epsilon and names the device, so a lost device state
never lowers a reported figure.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import DPSGDConfig

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps): one entry of an accountant's history


@dataclass(frozen=True)
class StepHistory:
    """The DP-SGD steps a device has taken, as an Opacus accountant records them."""

    entries: tuple[Step, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[Iterable[Any]]) -> StepHistory:
        return cls(tuple((float(s), float(q), int(n)) for s, q, n in entries))

    @classmethod
    def from_accountant(cls, accountant: IAccountant) -> StepHistory:
        return cls.of(accountant.state_dict()["history"])

    def load_into(self, accountant: IAccountant) -> IAccountant:
        """Restore ``accountant`` to this history through its ``state_dict`` API."""
        accountant.load_state_dict({"history": list(self.entries), "mechanism": accountant.mechanism()})
        return accountant

    def to_accountant(self, name: str = "rdp") -> IAccountant:
        # Opacus is imported here, not with this module: a device's state file needs only the history, and a
        # process that releases features or evaluates (one per message on a board) never builds an accountant
        from opacus.accountants import create_accountant

        return self.load_into(create_accountant(name))

    def extended(self, noise_multiplier: float, sample_rate: float, steps: int) -> StepHistory:
        """This history after ``steps`` more steps, merged as Opacus merges them (same sigma and rate)."""
        out = list(self.entries)
        if out and out[-1][:2] == (noise_multiplier, sample_rate):
            out[-1] = (noise_multiplier, sample_rate, out[-1][2] + steps)
        elif steps:
            out.append((noise_multiplier, sample_rate, steps))
        return StepHistory(tuple(out))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.entries)

    def epsilon(self, delta: float, accountant: str = "rdp", *, grouped: bool = False) -> float:
        """Pair-level epsilon at ``delta`` (through ``group_privacy`` when one step's unit is a group)."""
        if not self.entries:
            return 0.0
        if grouped:
            return group_privacy(lambda d: _opacus_epsilon(self.entries, d, accountant), delta)
        return _opacus_epsilon(self.entries, delta, accountant)

    def epsilon_dp_accounting(self, delta: float, *, grouped: bool = False) -> float:
        """The same steps re-accounted with dp-accounting's RDP accountant (the independent check)."""
        if not self.entries:
            return 0.0
        if grouped:
            return group_privacy(lambda d: _dp_accounting_epsilon(self.entries, d), delta)
        return _dp_accounting_epsilon(self.entries, delta)

    def as_list(self) -> list[list[float]]:
        """JSON-friendly form (``of`` reads it back)."""
        return [[s, q, n] for s, q, n in self.entries]


@functools.lru_cache(maxsize=4096)
def _opacus_epsilon(entries: tuple[Step, ...], delta: float, accountant: str) -> float:
    # Cached: one RDP evaluation is costly next to a message (benchmarks/gc_freeze.py), devices read it
    # several times a message, and every device of an IID federation holds the same history each round.
    try:
        return float(StepHistory(entries).to_accountant(accountant).get_epsilon(delta))
    except (ArithmeticError, ValueError):  # a sigma so small the RDP orders overflow: no bound at all
        return math.inf


@functools.lru_cache(maxsize=4096)
def _dp_accounting_epsilon(entries: tuple[Step, ...], delta: float) -> float:
    import dp_accounting  # the server's independent check; a device never needs it (and its import is slow)

    accountant = dp_accounting.rdp.RdpAccountant()
    try:
        for sigma, q, steps in entries:
            accountant.compose(
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
                )
            )
        return float(accountant.get_epsilon(delta))
    except (ArithmeticError, ValueError):
        return math.inf


def reference_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps by dp-accounting's RDP accountant."""
    return StepHistory.of([(noise_multiplier, sample_rate, steps)]).epsilon_dp_accounting(delta)


def group_privacy(epsilon_at: Callable[[float], float], delta: float) -> float:
    """Pair-level epsilon at ``delta`` from a group-level accountant (``epsilon_at(group_delta)``), for
    groups that one pair changes (k = 2): a group-level (e, d) guarantee gives (2e, 2 exp(e) d). d depends
    on e, so e is the fixed point of ``e = epsilon_at(delta / (2 exp(e)))`` (increasing iterates)."""
    e = epsilon_at(delta / 2)
    for _ in range(100):
        nxt = epsilon_at(delta / (2 * math.exp(e)))
        if abs(nxt - e) < 1e-9:
            break
        e = nxt
    return 2 * e


def group_target(cfg: DPSGDConfig) -> tuple[float, float]:
    """The group-level (epsilon, delta) whose pair-level conversion (``group_privacy``) is the target."""
    eps = cfg.target_epsilon / 2
    return eps, cfg.delta / (2 * math.exp(eps))


def calibrate_noise_multiplier(cfg: DPSGDConfig, sample_rate: float, epochs: int) -> float:
    """The configured noise multiplier, or the one that reaches ``target_epsilon`` after ``epochs``."""
    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    return _calibrated(cfg.target_epsilon, cfg.delta, sample_rate, cfg.accountant, epochs=epochs)


@functools.lru_cache(maxsize=256)
def _calibrated(epsilon: float, delta: float, sample_rate: float, accountant: str, **length: int) -> float:
    # Cached: a search over sigma costs a device's first message about as much as its training, and every
    # device of a population with equal shares searches for the same value; calibration_memo.py keeps the
    # results across processes and runs, each checked before use.
    from .calibration_memo import calibrated  # Opacus: imported there, only where it is used

    return calibrated(epsilon, delta, sample_rate, accountant, **length)


def calibrate_group_noise(cfg: DPSGDConfig, sample_rate: float, steps: int) -> float:
    """The noise that spends the group-level target in exactly ``steps`` steps. Counted in steps, not
    epochs: a loader of q = 16/125 takes floor(1/q) = 7 batches an epoch, not the 7.8 that Opacus' epoch
    form assumes, and calibrating for steps never taken would leave budget unspent."""
    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    eps, delta = group_target(cfg)
    return _calibrated(eps, delta, sample_rate, cfg.accountant, steps=steps)


@dataclass(frozen=True)
class DevicePrivacyPlan:
    """How a device's DP-SGD samples and accounts: per pair (Opacus' per-sample clipping), or per group of
    pairs for methods whose loss is a batch statistic (nopeek; ``group_dp_sgd.py``)."""

    grouped: bool
    sample_rate: float
    steps_per_epoch: int
    cfg: DPSGDConfig

    def epsilon(self, history: StepHistory) -> float:
        """Pair-level epsilon of a step history."""
        return history.epsilon(self.cfg.delta, self.cfg.accountant, grouped=self.grouped)

    def noise_multiplier(self, epochs: int) -> float:
        """Calibrated so that ``epochs`` of these steps spend the target epsilon (pair level)."""
        if self.grouped:
            return calibrate_group_noise(self.cfg, self.sample_rate, epochs * self.steps_per_epoch)
        return calibrate_noise_multiplier(self.cfg, self.sample_rate, epochs)


def pair_plan(cfg: DPSGDConfig, batch_size: int, num_examples: int) -> DevicePrivacyPlan:
    """The pair-level plan of a device holding ``num_examples`` pairs: Poisson sampling at one batch's share
    of them, that many batches an epoch. The device trains by it; the server computes it from its own
    config to check what a device reports (``ServerLedger.record_train``'s ``planned``)."""
    batches = max(1, num_examples // min(batch_size, num_examples))
    return DevicePrivacyPlan(False, 1 / batches, batches, cfg)


@dataclass
class DeviceRecord:
    """What the server knows of one device's DP-SGD."""

    reported_epsilon: float = 0.0  # the device's own (Opacus) figure, last reply
    reported_steps: int = 0  # cumulative steps the device says it has taken
    counted: StepHistory = field(default_factory=StepHistory)  # the steps the server saw it take
    planned: StepHistory = field(default_factory=StepHistory)  # the same rounds at the server's own sigma and q
    grouped: bool = False
    rounds_trained: int = 0  # rounds whose update was aggregated
    releases_max: int = 0  # the most releases of one of its pairs (its own count)


@dataclass
class ServerLedger:
    """Every device's privacy as the server sees it; saved and restored with the run's checkpoint."""

    delta: float
    accountant: str = "rdp"
    devices: dict[int, DeviceRecord] = field(default_factory=dict)
    rows_received: int = 0  # released task-feature rows received, all devices and rounds
    disagreements: dict[int, str] = field(default_factory=dict)  # device -> what did not match

    def record_train(
        self,
        device: int,
        *,
        epsilon: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        round_steps: int,
        grouped: bool,
        planned: tuple[float, float, int] | None = None,
    ) -> str | None:
        """A train reply, counted whether or not its update is aggregated (it left the device). Returns a
        message when the device's own count is below the server's (its state was lost): the server's
        larger figure then stands for it.

        ``planned``: (sigma, q, steps) of this round as the server's own config gives them for a device of
        the reply's size, where the server can compute them. The device's epsilon is then the larger of
        its claims' and the plan's, so a reply claiming a huge sigma or a tiny q books no less than the
        plan."""
        rec = self.devices.setdefault(device, DeviceRecord())
        rec.counted = rec.counted.extended(noise_multiplier, sample_rate, round_steps)
        if planned is not None:
            rec.planned = rec.planned.extended(*planned)
            claimed = (noise_multiplier, sample_rate, round_steps)
            if any(not math.isclose(a, b, rel_tol=1e-6) for a, b in zip(claimed, planned, strict=True)):
                self.disagreements[device] = (
                    f"claims sigma {noise_multiplier:.4g}, q {sample_rate:.4g}, {round_steps} steps this round; the "
                    f"server's config gives sigma {planned[0]:.4g}, q {planned[1]:.4g}, {planned[2]} steps for its "
                    "size: the larger epsilon stands"
                )
        rec.reported_epsilon, rec.reported_steps, rec.grouped = epsilon, steps, grouped
        if steps < rec.counted.steps:
            self.disagreements[device] = (
                f"reports {steps} DP-SGD steps (epsilon {epsilon:.3f}) but the server counted {rec.counted.steps} "
                f"(epsilon {self.epsilon(device):.3f}): its privacy state was lost or reset; the larger figure stands"
            )
            return self.disagreements[device]
        return None

    def record_releases(self, device: int, releases_max: int, rows: int) -> None:
        """A features reply: the device's own count of its most-released pair, and the rows it sent."""
        rec = self.devices.setdefault(device, DeviceRecord())
        rec.releases_max = max(rec.releases_max, releases_max)
        self.rows_received += rows

    def mark_aggregated(self, devices: Iterable[int]) -> None:
        """The devices whose update went into a round's aggregate (their ``rounds_trained``)."""
        for device in devices:
            self.devices[device].rounds_trained += 1

    def epsilon(self, device: int) -> float:
        """The largest of the device's reported epsilon, the server's count of its claimed steps, and the
        same rounds at the server's own plan."""
        rec = self.devices[device]
        counted = rec.counted.epsilon(self.delta, self.accountant, grouped=rec.grouped)
        planned = rec.planned.epsilon(self.delta, self.accountant, grouped=rec.grouped)
        return max(rec.reported_epsilon, counted, planned)

    @property
    def max_epsilon(self) -> float:
        return max((self.epsilon(d) for d in self.devices), default=0.0)

    @property
    def mean_epsilon(self) -> float:
        trained = [self.epsilon(d) for d in self.devices]
        return sum(trained) / max(1, len(trained))

    @property
    def max_releases_per_pair(self) -> int:
        return max((r.releases_max for r in self.devices.values()), default=0)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per device: its figures, re-accounted with dp-accounting (the independent check)."""
        rows = {}
        for device, rec in sorted(self.devices.items()):
            sigma, q = rec.counted.entries[-1][:2] if rec.counted.entries else (0.0, 0.0)
            rows[str(device)] = {
                "rounds_trained": rec.rounds_trained,
                "steps": max(rec.reported_steps, rec.counted.steps),
                "steps_counted_by_server": rec.counted.steps,
                "noise_multiplier": sigma,
                "sample_rate": q,
                "clipping_unit": "group of pairs" if rec.grouped else "pair",
                "epsilon": self.epsilon(device),
                "epsilon_reported": rec.reported_epsilon,
                "epsilon_dp_accounting": rec.counted.epsilon_dp_accounting(self.delta, grouped=rec.grouped),
                "releases_per_pair_max": rec.releases_max,
                **({"disagreement": self.disagreements[device]} if device in self.disagreements else {}),
            }
        return rows

    @staticmethod
    def max_relative_difference(rows: dict[str, dict[str, Any]]) -> float | None:
        """Largest |epsilon - re-accounted| / re-accounted over devices that trained; None if none did."""
        diffs = [
            abs(r["epsilon"] - r["epsilon_dp_accounting"]) / r["epsilon_dp_accounting"]
            for r in rows.values()
            if r["steps"] and r["epsilon_dp_accounting"] > 0
        ]
        return max(diffs) if diffs else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "accountant": self.accountant,
            "rows_received": self.rows_received,
            "disagreements": {str(d): m for d, m in self.disagreements.items()},
            "devices": {
                str(d): {
                    "reported_epsilon": r.reported_epsilon,
                    "reported_steps": r.reported_steps,
                    "counted": r.counted.as_list(),
                    "planned": r.planned.as_list(),
                    "grouped": r.grouped,
                    "rounds_trained": r.rounds_trained,
                    "releases_max": r.releases_max,
                }
                for d, r in self.devices.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta, self.accountant = float(state["delta"]), str(state["accountant"])
        self.rows_received = int(state["rows_received"])
        self.disagreements = {int(d): str(m) for d, m in state["disagreements"].items()}
        self.devices = {
            int(d): DeviceRecord(
                reported_epsilon=float(r["reported_epsilon"]),
                reported_steps=int(r["reported_steps"]),
                counted=StepHistory.of(r["counted"]),
                planned=StepHistory.of(r.get("planned", [])),  # checkpoints before the plan existed
                grouped=bool(r["grouped"]),
                rounds_trained=int(r["rounds_trained"]),
                releases_max=int(r["releases_max"]),
            )
            for d, r in state["devices"].items()
        }
