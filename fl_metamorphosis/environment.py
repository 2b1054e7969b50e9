"""The environment variables this project reads, named once.

Launchers set them for the processes Flower starts (which get no other channel from the launcher), and
the apps read them: a name written twice as a bare string can drift apart without an error.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

SIMULATION_ENV = "METAMORPHOSIS_SIMULATION"  # set by `simulate` for its devices; never on a real device
CORES_ENV = "METAMORPHOSIS_CORES"  # the cores a run may use, when a sweep runs cells side by side
DEVICE_POLICY_ENV = "METAMORPHOSIS_DEVICE_POLICY"  # a policy file named in a device's own environment
DEBUG_ENV = "METAMORPHOSIS_DEBUG"  # the CLI prints the traceback of an unexpected error


def cache_root() -> Path:
    """This project's cache folder: ``$XDG_CACHE_HOME/fl-metamorphosis``, else ``~/.cache/fl-metamorphosis``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fl-metamorphosis"


def cores_from_env() -> int | None:
    """The cores a run may use, from ``METAMORPHOSIS_CORES`` (None: unset, so all of the machine's). A run
    limited this way also gives Ray that many CPUs, so it starts no more device actors than it has cores."""
    value = os.environ.get(CORES_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CORES_ENV}={value!r}: a whole number of cores, 1 or more; or unset it to use them all")
    return int(value)


def machine_description() -> str:
    """What a run's timings were measured on, for its summary."""
    import torch  # here: the names above are read by processes that never train

    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU"
