"""DP-SGD on the encoder + Cross-SEC through Opacus, the one entry point for weight-level privacy.

The noise multiplier is either given or calibrated ONCE to a target epsilon for the planned number of
steps (Opacus' ``get_noise_multiplier``); epsilon is then read from the accountant that saw the real
steps (``accounting.py`` holds every epsilon computation, and the dp-accounting cross-check).

The noise and the Poisson sampling come from the caller's ``Randomness`` (``privacy/randomness.py``),
never from torch's global generator: Opacus draws both from it by default, and a device that seeds it
from anything the server knows hands the server its noise. ``SecretNoiseDPOptimizer`` is Opacus'
``DPOptimizer`` with that one change; the engine, clipping and accountant are Opacus' own.

Each sample's gradient norm comes either from ghost clipping (``ghost_clipping.py``, the default: two
backward passes, no per-sample gradient) or from Opacus' hooks (``grad_sample_mode="hooks"``: every
per-sample gradient formed). Both give the same clipped sum; the noise, the scaling and the accountant
are the same code either way. Training loops call ``PrivateTraining.backward(per_sample_loss)`` and
need not know which.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn, optim
from torch.utils.data import DataLoader

from ..config import DPSGDConfig
from .accounting import StepHistory, calibrate_noise_multiplier
from .ghost_clipping import GhostClippingDPOptimizer
from .randomness import Randomness
from .secret_noise import SecretNoise


class SecretNoiseDPOptimizer(SecretNoise, DPOptimizer):
    """Opacus' DPOptimizer whose Gaussian noise comes from a ``Randomness`` (by default the OS CSPRNG)."""


class _DevicePrivacyEngine(PrivacyEngine):
    """Opacus' engine, building ``SecretNoiseDPOptimizer`` instead of the generator-driven DPOptimizer."""

    def __init__(self, *, accountant: str, randomness: Randomness):
        super().__init__(accountant=accountant)
        self.randomness = randomness

    def _prepare_optimizer(self, *, optimizer, noise_multiplier, max_grad_norm, expected_batch_size, **kwargs):
        if kwargs.get("distributed") or kwargs.get("clipping", "flat") != "flat":
            raise ValueError("device DP-SGD supports flat clipping on one process only")
        return SecretNoiseDPOptimizer(
            optimizer,
            randomness=self.randomness,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction=kwargs.get("loss_reduction", "mean"),
        )


@dataclass
class PrivateTraining:
    module: nn.Module  # train through this one (Opacus-wrapped with hooks; the module itself with ghost)
    optimizer: optim.Optimizer
    loader: DataLoader  # Poisson-sampled
    engine: PrivacyEngine
    noise_multiplier: float
    sample_rate: float
    delta: float

    def backward(self, per_sample: torch.Tensor, others: Iterable[nn.Parameter] = ()) -> None:
        """Backpropagate a batch's per-sample loss ``[B]`` for the next ``optimizer.step()``.
        ``others`` (parameters outside ``module``) get the plain gradient of the mean loss."""
        if isinstance(self.optimizer, GhostClippingDPOptimizer):
            self.optimizer.backward(per_sample, others)
        else:
            per_sample.mean().backward()

    def epsilon(self) -> float:
        return float(self.engine.get_epsilon(self.delta)) if self.engine.accountant.history else 0.0

    @property
    def history(self) -> StepHistory:
        """The accountant's (noise multiplier, sample rate, steps) entries: all it needs to resume."""
        return StepHistory.from_accountant(self.engine.accountant)


def make_private(
    module: nn.Module,
    optimizer: optim.Optimizer,
    loader: DataLoader,
    cfg: DPSGDConfig,
    epochs: int,
    noise_multiplier: float | None = None,
    history: StepHistory | None = None,
    *,
    randomness: Randomness,
) -> PrivateTraining:
    """Wrap ``module`` (encoder + Cross-SEC) for DP-SGD with Poisson sampling over ``loader``'s dataset.

    ``noise_multiplier`` overrides the config (a federated server calibrates it once for all rounds);
    ``history`` restores an accountant's earlier steps, so epsilon is cumulative across calls;
    ``randomness`` draws the noise and the Poisson sampling.
    """
    sample_rate = 1 / len(loader)
    sigma = noise_multiplier if noise_multiplier is not None else calibrate_noise_multiplier(cfg, sample_rate, epochs)
    engine = _DevicePrivacyEngine(accountant=cfg.accountant, randomness=randomness)
    if history is not None:
        history.load_into(engine.accountant)
    poisson = DPDataLoader.from_data_loader(loader, generator=randomness.generator())
    if cfg.grad_sample_mode == "ghost":
        ghost_opt = GhostClippingDPOptimizer(
            optimizer,
            module=module,
            randomness=randomness,
            noise_multiplier=sigma,
            max_grad_norm=cfg.max_grad_norm,
            expected_batch_size=int(len(loader.dataset) * sample_rate),  # as Opacus' make_private
            loss_reduction="mean",
        )
        ghost_opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        return PrivateTraining(module, ghost_opt, poisson, engine, sigma, sample_rate, cfg.delta)
    private_module, private_opt, private_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=poisson,
        noise_multiplier=sigma,
        max_grad_norm=cfg.max_grad_norm,
        poisson_sampling=False,  # already Poisson-sampled, with the caller's generator
        grad_sample_mode="hooks",  # per-sample gradients by module hooks; ghost clipping needs its own loss wrapper
    )
    private_module.forbid_grad_accumulation()
    return PrivateTraining(private_module, private_opt, private_loader, engine, sigma, sample_rate, cfg.delta)
