"""DP-SGD on the encoder + Cross-SEC through Opacus, the one entry point for weight-level privacy.

The noise multiplier is either given or calibrated ONCE to a target epsilon for the planned number of
steps (Opacus' ``get_noise_multiplier``); epsilon is then read from the accountant that saw the real
steps. ``reference_epsilon`` recomputes it with Google's dp-accounting as an independent check.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

# opacus calls logging.basicConfig() on import; give the root logger a handler first so lines don't double.
logging.getLogger().addHandler(logging.NullHandler())

import dp_accounting  # noqa: E402
from opacus import PrivacyEngine  # noqa: E402
from opacus.accountants import create_accountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ..config import DPSGDConfig  # noqa: E402


@dataclass
class PrivateTraining:
    module: nn.Module  # the Opacus-wrapped module: train through this one
    optimizer: optim.Optimizer
    loader: DataLoader  # Poisson-sampled
    engine: PrivacyEngine
    noise_multiplier: float
    sample_rate: float
    delta: float

    def epsilon(self) -> float:
        return float(self.engine.get_epsilon(self.delta)) if self.engine.accountant.history else 0.0

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's (noise multiplier, sample rate, steps) entries: all it needs to resume."""
        return [tuple(h) for h in self.engine.accountant.history]


def calibrate_noise_multiplier(cfg: DPSGDConfig, sample_rate: float, epochs: int) -> float:
    """The configured noise multiplier, or the one that reaches ``target_epsilon`` after ``epochs``."""
    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    return float(
        get_noise_multiplier(
            target_epsilon=cfg.target_epsilon,
            target_delta=cfg.delta,
            sample_rate=sample_rate,
            epochs=epochs,
            accountant=cfg.accountant,
        )
    )


def make_private(
    module: nn.Module,
    optimizer: optim.Optimizer,
    loader: DataLoader,
    cfg: DPSGDConfig,
    epochs: int,
    noise_multiplier: float | None = None,
    history: list[tuple[float, float, int]] | None = None,
) -> PrivateTraining:
    """Wrap ``module`` (encoder + Cross-SEC) for DP-SGD with Poisson sampling over ``loader``'s dataset.

    ``noise_multiplier`` overrides the config (a federated server calibrates it once for all rounds);
    ``history`` restores an accountant's earlier steps, so epsilon is cumulative across calls.
    """
    sample_rate = 1 / len(loader)
    sigma = noise_multiplier if noise_multiplier is not None else calibrate_noise_multiplier(cfg, sample_rate, epochs)
    engine = PrivacyEngine(accountant=cfg.accountant)
    engine.accountant.history = [tuple(h) for h in history or []]
    private_module, private_opt, private_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=cfg.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",  # per-sample gradients by module hooks; ghost clipping needs its own loss wrapper
    )
    return PrivateTraining(private_module, private_opt, private_loader, engine, sigma, sample_rate, cfg.delta)


def reference_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps by dp-accounting's RDP accountant."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps
    )
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def history_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of an Opacus accountant history (0 for no steps)."""
    return _history_epsilon(tuple(tuple(h) for h in history), delta, accountant)


@functools.lru_cache(maxsize=4096)
def _history_epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    # Cached: an RDP evaluation takes about 50 ms, devices read it several times a message, and every
    # device of an IID federation (many share one simulated process) holds the same history each round.
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta))
