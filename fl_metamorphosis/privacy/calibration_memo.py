"""Noise calibrations remembered across processes, each one checked before it is used.

The noise multiplier that spends a target epsilon is found by a search: Opacus' ``get_noise_multiplier``
evaluates its accountant over and over, which costs a message as much as its training. A device
searches in its first training message of every run, and the server repeats the search to check what
devices report. A deployed device runs each message in a new process and a simulation each device actor
in its own, so the processes' own caches seldom meet: every run, sweep cell and test of the same settings
searched again for the same value. The results are therefore kept in a file,
``$XDG_CACHE_HOME/fl-metamorphosis/noise_calibration.json`` (else ``~/.cache/...``), keyed by every input
of the search and Opacus' version.

A remembered value is a hint, never trusted. Before it is used, the accountant computes its epsilon once,
and it is used only where that epsilon is what the search itself guarantees: at most the target, and
within the search's tolerance of it. A damaged or edited file costs a search, never privacy. What a device
spends is accounted from the steps it takes, as always; the file only saves the search. A cache that
cannot be read or written is left alone: the search runs as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from ..environment import cache_root
from .accounting import StepHistory

TOLERANCE = 0.01  # get_noise_multiplier's default epsilon_tolerance, which the search runs with
FILE_NAME = "noise_calibration.json"


def memo_file() -> Path:
    return cache_root() / FILE_NAME


def calibrated(epsilon: float, delta: float, sample_rate: float, accountant: str, **length: int) -> float:
    """Opacus' ``get_noise_multiplier`` for ``length`` (``epochs=`` or ``steps=``), from the memo where a
    remembered value passes the check."""
    import opacus
    from opacus.accountants.utils import get_noise_multiplier

    [(unit, count)] = length.items()
    steps = int(count / sample_rate) if unit == "epochs" else int(count)  # as get_noise_multiplier counts
    key = json.dumps([opacus.__version__, accountant, epsilon, delta, sample_rate, unit, count])
    path = memo_file()
    sigma = _read(path).get(key)
    if isinstance(sigma, float) and sigma > 0:
        spent = StepHistory.of([(sigma, sample_rate, steps)]).epsilon(delta, accountant)
        if epsilon - TOLERANCE <= spent <= epsilon:
            return sigma
    sigma = float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            accountant=accountant,
            epsilon_tolerance=TOLERANCE,
            **length,
        )
    )
    _write(path, key, sigma)
    return sigma


def _read(path: Path) -> dict:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write(path: Path, key: str, sigma: float) -> None:
    """Add ``key``; atomically (a reader sees the old file or the new), losing at worst a concurrent entry."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        memo = _read(path)
        memo[key] = sigma
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".noise_calibration-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(memo, f)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
