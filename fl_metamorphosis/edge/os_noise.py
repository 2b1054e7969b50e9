"""Feature noise from the operating system's CSPRNG, in numpy: the edge runtime's only source of noise.

The training devices draw their noise in ``privacy/randomness.py`` (torch, with ChaCha20 from
``cryptography`` keyed by ``os.urandom``). A board that only infers has neither torch nor, necessarily,
``cryptography``, so here the bits come from ``os.urandom`` itself, which is the same kernel generator.
The construction is the training one, so both release the same distribution:

* 53 random bits per uniform double in (0, 1), never exactly 0 or 1;
* Box-Muller in float64, and each Gaussian sample the sum of four normals, halved (Holohan & Braghin
  2021): a single Box-Muller float leaks which values were possible through its low-order bits;
* Laplace by the inverse CDF of a uniform in (-1/2, 1/2).

There is no seed anywhere: nothing the cloud knows can regenerate the noise.
"""

from __future__ import annotations

import math
import os

import numpy as np

_MANTISSA = (1 << 53) - 1


def secret_uniform(n: int) -> np.ndarray:
    """``n`` float64 uniforms in (0, 1), 53 bits each, from ``os.urandom``."""
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) & np.uint64(_MANTISSA)
    return (bits.astype(np.float64) + 0.5) * 2.0**-53


def secret_normal(shape: tuple[int, ...], std: float) -> np.ndarray:
    """N(0, std^2) noise of ``shape``, float32."""
    n = math.prod(shape)
    u1, u2 = secret_uniform(4 * n).reshape(2, -1)
    r = np.sqrt(-2.0 * np.log(u1))
    angle = 2 * math.pi * u2
    z = np.concatenate([r * np.cos(angle), r * np.sin(angle)]).reshape(4, n).sum(0) / 2
    return (z * std).astype(np.float32).reshape(shape)


def secret_laplace(shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Laplace noise of scale ``scale`` and ``shape``, float32."""
    u = secret_uniform(math.prod(shape)).reshape(shape) - 0.5
    return (-scale * np.sign(u) * np.log1p(-2 * np.abs(u))).astype(np.float32)


def secret_noise(mechanism: str, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """The feature-DP mechanism's noise: Gaussian of std ``scale``, or Laplace of scale ``scale``."""
    return secret_normal(shape, scale) if mechanism == "gaussian" else secret_laplace(shape, scale)
