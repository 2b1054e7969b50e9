"""MLflow and TensorBoard tracking of runs, sweeps and searches (``tracking`` in the config, ``--track``)."""

from .base import params_of
from .run_tracking import TrackedRun, config_params

__all__ = ["TrackedRun", "config_params", "params_of"]
