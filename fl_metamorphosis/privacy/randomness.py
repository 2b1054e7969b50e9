"""Privacy randomness that the server cannot reproduce.

Everything that makes a device's release or update private is drawn from one ``Randomness``: DP-SGD's
Gaussian noise, its Poisson sampling, the feature noise, and the choice of which pairs to release. The
parties we protect against (the server, the other tasks' owners) know the config, the round and the
device id; noise derived from any of them could be regenerated and subtracted, so by default nothing
of the kind enters it:

* Gaussian and Laplace noise comes from a cryptographic generator: the ChaCha20 keystream under a fresh
  256-bit key and nonce from the operating system's CSPRNG (``os.urandom``) for every draw (the
  construction of the kernel's own generator; ``cryptography``'s ChaCha20 is faster than reading the
  bits from ``os.urandom``: docs/privacy.md), turned into uniform doubles and then into normals by
  Box-Muller in float64.
  torch's CPU generator is a Mersenne Twister, which is not a cryptographic generator (its state
  follows from its outputs), and Opacus' own answer, ``secure_mode``, needs ``torchcsprng``, which has
  no build for current torch.
* Each Gaussian sample is the sum of four normals, halved, as in Opacus' secure mode (Holohan & Braghin
  2021, n = 2): a single Box-Muller float leaks through its low-order bits which values were possible
  (the floating-point attacks of arXiv 2112.05307); the sum hides that.
* Sampling (Poisson batches, permutations, the released pairs) uses torch generators, each seeded with
  64 fresh bits from ``os.urandom``: the sampling is secret, and it needs no more than that.
* Noise that never leaves the device (the release gate's rehearsal of a release, ``local_only``) comes
  from such a torch generator too. The floating-point attacks need the noised values themselves; these
  only decide what the device sends, and their distribution is the release's. The cryptographic draw
  was most of the gate's time (docs/federated.md).

``Randomness.seeded(seed)`` gives reproducible draws for research runs. It is NOT private against anyone
who knows the seed; summaries flag it, and a device outside simulation refuses it.
"""

from __future__ import annotations

import math
import os

import torch


class Randomness:
    """A device's source of privacy randomness: secret (the default) or seeded (reproducible)."""

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._torch = None if seed is None else torch.Generator().manual_seed(seed)

    @classmethod
    def secret(cls) -> Randomness:
        return cls(None)

    @classmethod
    def seeded(cls, seed: int) -> Randomness:
        return cls(seed)

    @property
    def is_secret(self) -> bool:
        return self.seed is None

    def generator(self) -> torch.Generator:
        """A fresh torch generator for sampling: 64 bits of OS entropy, or the next seed of the seeded stream."""
        if self._torch is None:
            seed = int.from_bytes(os.urandom(8), "little")
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._torch))
        return torch.Generator().manual_seed(seed)

    def local_only(self) -> Randomness:
        """A fast stream for noise that never leaves the device: a torch generator under 62 bits drawn from
        this one (secret when this is secret, reproducible when it is seeded). Never for a release."""
        return Randomness.seeded(int(torch.randint(0, 2**62, (1,), generator=self.generator())))

    def normal(
        self, shape: torch.Size | tuple[int, ...], std: float, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Gaussian noise N(0, std^2) of ``shape``."""
        if self._torch is not None:
            return torch.randn(tuple(shape), generator=self._torch, dtype=dtype) * std
        n = math.prod(shape)
        # four standard normals per sample, summed and halved: still N(0, 1), without Box-Muller's float gaps
        z = _box_muller(_secret_uniform(4 * n)).view(4, n).sum(0) / 2
        return (z * std).to(dtype).reshape(tuple(shape))

    def laplace(
        self, shape: torch.Size | tuple[int, ...], scale: float, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Laplace noise of scale ``scale`` (inverse CDF of a uniform in (-1/2, 1/2))."""
        if self._torch is not None:
            u = torch.rand(tuple(shape), generator=self._torch, dtype=torch.float64) - 0.5
        else:
            u = _secret_uniform(math.prod(shape)).reshape(tuple(shape)) - 0.5
        return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(dtype)


def _secret_uniform(n: int) -> torch.Tensor:
    """``n`` float64 uniform in (0, 1) (53 random bits each, never exactly 0 or 1) from ChaCha20 keyed by
    the OS CSPRNG: a new key and nonce per call, so no two calls share a keystream."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # a device's only use of it

    seed = os.urandom(44)
    # cryptography's 16-byte ChaCha20 nonce starts with the 32-bit block counter: a random counter would
    # overflow (and raise) on a long draw that starts near 2^32, so it starts at 0 under the fresh key
    nonce = bytes(4) + seed[32:]
    stream = Cipher(algorithms.ChaCha20(seed[:32], nonce), mode=None).encryptor().update(bytes(8 * n))
    bits = torch.frombuffer(bytearray(stream), dtype=torch.int64) & ((1 << 53) - 1)  # the low 53 bits
    return (bits.to(torch.float64) + 0.5) * 2.0**-53


def _box_muller(u: torch.Tensor) -> torch.Tensor:
    """Standard normals from an even number of uniforms: two normals per pair (cosine and sine branch)."""
    u1, u2 = u.view(2, -1)
    r = torch.sqrt(-2.0 * torch.log(u1))
    angle = 2 * math.pi * u2
    return torch.cat([r * torch.cos(angle), r * torch.sin(angle)])


def randomness_for(source: str, *seed_parts: int) -> Randomness:
    """Secret randomness (``source`` "os_entropy"), or for "seeded" a stream that is a function of
    ``seed_parts`` (e.g. config seed, device, round, purpose): reproducible, hence not private against
    anyone who knows them."""
    if source == "os_entropy":
        return Randomness.secret()
    if source != "seeded":
        raise ValueError(f"randomness.source must be 'os_entropy' or 'seeded', got {source!r}")
    seed = 0
    for part in seed_parts:
        seed = (seed * 1_000_003 + int(part)) % 2**62
    return Randomness.seeded(seed)
