"""Goodness of fit for noise that nothing can replay.

The devices' noise comes from the operating system on purpose (no seed the cloud could know), so these
tests draw afresh on every run and a fit test fails by chance at its own p threshold. At 1e-3 the suite's
eight fits failed about one CI run in 125 (a Laplace fit at p = 0.00072 did); at 1e-6 a correct sampler
fails about once in 125,000 runs. A wrong shape still fails: at 200,000 draws a 5 % error in the scale
gives p below 1e-13. The tests' own std checks catch smaller errors in the scale.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

P_FLOOR = 1e-6


def assert_fits(sample: np.ndarray, distribution: str, args: tuple = ()) -> None:
    """Fail unless a Kolmogorov-Smirnov test keeps ``sample`` as drawn from ``distribution(*args)``."""
    p = stats.kstest(np.asarray(sample, dtype=np.float64), distribution, args=args).pvalue
    assert p > P_FLOOR, f"the sample does not fit {distribution}{args}: KS p = {p:.3g}"
