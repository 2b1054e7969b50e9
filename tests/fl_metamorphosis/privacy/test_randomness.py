import math

import pytest
import torch
from noise_fit import assert_fits

from fl_metamorphosis.privacy.randomness import Randomness, randomness_for


def test_secret_noise_is_fresh_every_time_and_seeded_noise_repeats():
    a, b = Randomness.secret(), Randomness.secret()
    assert not torch.equal(a.normal((1000,), 1.0), b.normal((1000,), 1.0))
    draws = {int(torch.randint(0, 2**62, (1,), generator=a.generator())) for _ in range(3)}
    assert len(draws) == 3  # each sampling generator gets its own 64 secret bits
    s1, s2 = randomness_for("seeded", 0, 3, 7, 2), randomness_for("seeded", 0, 3, 7, 2)
    assert torch.equal(s1.normal((1000,), 1.0), s2.normal((1000,), 1.0))
    assert not torch.equal(randomness_for("seeded", 0, 3, 8, 2).normal((10,), 1.0), s1.normal((10,), 1.0))
    assert randomness_for("os_entropy", 0, 3, 7, 2).is_secret and not s1.is_secret


@pytest.mark.parametrize("std", [0.2, 3.0])
def test_secret_gaussian_noise_is_gaussian(std):
    x = Randomness.secret().normal((200_000,), std, dtype=torch.float64).numpy()
    assert_fits(x / std, "norm")  # the sum of four halved normals is N(0, 1)
    assert float(x.std()) == pytest.approx(std, rel=0.01)


def test_secret_laplace_noise_has_the_laplace_distribution():
    x = Randomness.secret().laplace((200_000,), 0.5, dtype=torch.float64).numpy()
    assert_fits(x, "laplace", (0, 0.5))
    assert float(x.std()) == pytest.approx(0.5 * math.sqrt(2), rel=0.02)


def test_local_only_noise_is_fresh_from_a_secret_source_repeats_from_a_seeded_one_and_is_gaussian():
    """The release gate's rehearsal noise: never released, but no one may predict it either."""
    secret = Randomness.secret()
    a, b = secret.local_only().normal((100_000,), 0.7), secret.local_only().normal((100_000,), 0.7)
    assert not torch.equal(a, b)
    again = [Randomness.seeded(5).local_only().normal((64,), 1.0) for _ in range(2)]
    assert torch.equal(*again)
    x = a.double().numpy()
    assert_fits(x / 0.7, "norm")
    assert float(x.std()) == pytest.approx(0.7, rel=0.02)


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="randomness.source"):
        randomness_for("time", 0)


def test_a_long_secret_draw_never_overflows_the_chacha20_block_counter(monkeypatch):
    from fl_metamorphosis.privacy import randomness

    # OS bytes that would put a counter taken from them one block short of 2^32
    monkeypatch.setattr(randomness.os, "urandom", lambda n: b"\xff" * n)
    u = randomness._secret_uniform(100_000)  # 12,500 ChaCha20 blocks
    assert u.shape == (100_000,) and 0 < float(u.min()) and float(u.max()) < 1
