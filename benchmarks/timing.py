"""The timing helpers the benchmarks share: the median of repeated wall-clock measurements, and how a table
shows the spread of runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 5, warm_up: bool = False) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (after one untimed call when ``warm_up``)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def spread(values: list[float], fmt: str = ".3f") -> str:
    """``median (min-max)`` of ``values``, each number formatted with ``fmt``."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
