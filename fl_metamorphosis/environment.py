"""The environment variables this project reads, named once.

Launchers set them for the processes Flower starts (which get no other channel from the launcher), and
the apps read them: a name written twice as a bare string can drift apart without an error.
"""

from __future__ import annotations

import platform

SIMULATION_ENV = "METAMORPHOSIS_SIMULATION"  # set by `simulate` for its devices; never on a real device
CORES_ENV = "METAMORPHOSIS_CORES"  # the cores a run may use, when a sweep runs cells side by side
DEVICE_POLICY_ENV = "METAMORPHOSIS_DEVICE_POLICY"  # a policy file named in a device's own environment
DEBUG_ENV = "METAMORPHOSIS_DEBUG"  # the CLI prints the traceback of an unexpected error


def machine_description() -> str:
    """What a run's timings were measured on, for its summary."""
    import torch  # here: the names above are read by processes that never train

    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU"
